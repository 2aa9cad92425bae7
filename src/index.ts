/**
 * @module oncely: the Idempotency-Key engine, its errors, the store contract and the memory store.
 */
export { readLimited } from './core/body.js';
export {
  BODY_OMITTED_HEADER,
  type Decision,
  Engine,
  type ExecuteDecision,
  Execution,
  type IncomingRequest,
  type OutgoingResponse,
  PASS,
  type PassDecision,
  problemResponse,
  REPLAYED_HEADER,
  type RespondDecision,
  recordableHeaders,
} from './core/engine.js';
export {
  IdempotencyError,
  InvalidKeyError,
  KeyInUseError,
  KeyNotAllowedError,
  KeyReusedError,
  MissingKeyError,
  type Problem,
  type ProblemCode,
  RequestTooLargeError,
  ResponseIncompleteError,
  StoreTimeoutError,
  StoreUnavailableError,
  UpstreamFailedError,
  UpstreamTimeoutError,
  UpstreamUnreachableError,
} from './core/errors.js';
export type { EngineEvent, EngineEventType } from './core/events.js';
export { defaultFingerprint, defaultScope } from './core/fingerprint.js';
export { IDEMPOTENCY_KEY_HEADER, parseKey, redactKey } from './core/key.js';
export {
  DEFAULT_LOCK_TIMEOUT_MS,
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_MAX_RESPONSE_BYTES,
  DEFAULT_METHODS,
  DEFAULT_STORE_TIMEOUT_MS,
  DEFAULT_TTL_MS,
  DEFAULT_WAIT_TIMEOUT_MS,
  type IdempotencyOptions,
  type ResolvedOptions,
  resolveOptions,
} from './core/options.js';
export type { IdempotencyRequest } from './core/request.js';
export type {
  AcquireInput,
  AcquireResult,
  HeaderMap,
  RecordView,
  Store,
  StoredResponse,
} from './core/store.js';
export { MemoryStore, type MemoryStoreOptions } from './stores/memory.js';
