/**
 * @module Options of the idempotency engine, their defaults and their validation.
 */

import { MemoryStore } from '../stores/memory.js';
import type { EngineEvent } from './events.js';
import type { IdempotencyRequest } from './request.js';
import type { Store } from './store.js';

export const DEFAULT_METHODS = ['POST', 'PATCH'] as const;
export const DEFAULT_TTL_MS = 86_400_000;
export const DEFAULT_LOCK_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_REQUEST_BYTES = 1_048_576;
export const DEFAULT_MAX_RESPONSE_BYTES = 1_048_576;
export const DEFAULT_WAIT_TIMEOUT_MS = 10_000;
export const DEFAULT_STORE_TIMEOUT_MS = 5_000;

/** Options shared by every adapter. Every field is optional. */
export interface IdempotencyOptions<Raw = unknown> {
  /**
   * Where records live. One store may serve many middlewares.
   * @default a new {@link MemoryStore} (one process only; use SQLite, Redis or PostgreSQL beyond that)
   */
  store?: Store;
  /** M1: methods on which keys take effect. @default ['POST', 'PATCH'] */
  methods?: readonly string[];
  /** M3: answer 400 `idempotency_key_missing` to a keyed method without a key. @default false */
  required?: boolean;
  /** M2: what to do with a key on any other method. @default 'ignore' */
  onSafeMethodKey?: 'ignore' | 'reject';
  /** F1: replaces the default fingerprint (SHA-256 of method, URL, Content-Type and body). */
  fingerprint?: (request: IdempotencyRequest<Raw>) => string | Promise<string>;
  /** S1: the namespace of keys. @default SHA-256 of the `Authorization` header */
  scope?: (request: IdempotencyRequest<Raw>) => string | Promise<string>;
  /** T1: how long a completed record is kept, in ms. @default 86_400_000 (24 h) */
  ttlMs?: number;
  /** L3: the lease of an in-flight record, in ms; renewed every third of it while the handler runs. @default 60_000 */
  lockTimeoutMs?: number;
  /** R7: largest keyed request body, in bytes; larger ones get 413. @default 1_048_576 */
  maxRequestBytes?: number;
  /** R7: largest response body recorded, in bytes; larger ones are delivered but replayed without body. @default 1_048_576 */
  maxResponseBytes?: number;
  /** R1: which outcomes are recorded; the others release the key. @default 'all' */
  record?: 'all' | 'non-5xx' | '2xx';
  /** L2: answer a concurrent duplicate with 409 at once, or wait for the first outcome. @default 'reject' */
  onInFlight?: 'reject' | 'wait';
  /** L2: with `onInFlight: 'wait'`, how long a duplicate waits before it gets 409, in ms. @default 10_000 */
  waitTimeoutMs?: number;
  /** S2: on store errors answer 503 (`'fail-closed'`) or run the handler unprotected (`'fail-open'`). @default 'fail-closed' */
  onStoreError?: 'fail-closed' | 'fail-open';
  /** S2: a store call that takes longer than this counts as a store error, in ms. @default 5_000 */
  storeTimeoutMs?: number;
  /** Reports every decision with its timing, for metrics and logs. Must not throw. */
  onEvent?: (event: EngineEvent) => void;
}

/** Options after defaults and validation. */
export interface ResolvedOptions<Raw = unknown> {
  store: Store;
  methods: ReadonlySet<string>;
  required: boolean;
  onSafeMethodKey: 'ignore' | 'reject';
  fingerprint: ((request: IdempotencyRequest<Raw>) => string | Promise<string>) | undefined;
  scope: ((request: IdempotencyRequest<Raw>) => string | Promise<string>) | undefined;
  ttlMs: number;
  lockTimeoutMs: number;
  maxRequestBytes: number;
  maxResponseBytes: number;
  record: 'all' | 'non-5xx' | '2xx';
  onInFlight: 'reject' | 'wait';
  waitTimeoutMs: number;
  onStoreError: 'fail-closed' | 'fail-open';
  storeTimeoutMs: number;
  onEvent: ((event: EngineEvent) => void) | undefined;
}

const KNOWN_OPTIONS = new Set([
  'store',
  'methods',
  'required',
  'onSafeMethodKey',
  'fingerprint',
  'scope',
  'ttlMs',
  'lockTimeoutMs',
  'maxRequestBytes',
  'maxResponseBytes',
  'record',
  'onInFlight',
  'waitTimeoutMs',
  'onStoreError',
  'storeTimeoutMs',
  'onEvent',
]);

const METHOD_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Apply defaults and validate every option once, at construction. Throws a `TypeError` or
 * `RangeError` whose message names the option and says what it accepts.
 */
export function resolveOptions<Raw>(options: IdempotencyOptions<Raw> = {}): ResolvedOptions<Raw> {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError('options must be an object');
  }
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(name)) {
      throw new TypeError(
        `options.${name} is not an oncely option (known: ${[...KNOWN_OPTIONS].join(', ')})`,
      );
    }
  }
  return {
    store: resolveStore(options.store),
    methods: resolveMethods(options.methods),
    required: boolean('required', options.required, false),
    onSafeMethodKey: oneOf('onSafeMethodKey', options.onSafeMethodKey, ['ignore', 'reject'] as const),
    fingerprint: fn('fingerprint', options.fingerprint),
    scope: fn('scope', options.scope),
    ttlMs: positiveInteger('ttlMs', options.ttlMs, DEFAULT_TTL_MS),
    lockTimeoutMs: positiveInteger('lockTimeoutMs', options.lockTimeoutMs, DEFAULT_LOCK_TIMEOUT_MS),
    maxRequestBytes: positiveInteger('maxRequestBytes', options.maxRequestBytes, DEFAULT_MAX_REQUEST_BYTES),
    maxResponseBytes: positiveInteger(
      'maxResponseBytes',
      options.maxResponseBytes,
      DEFAULT_MAX_RESPONSE_BYTES,
    ),
    record: oneOf('record', options.record, ['all', 'non-5xx', '2xx'] as const),
    onInFlight: oneOf('onInFlight', options.onInFlight, ['reject', 'wait'] as const),
    waitTimeoutMs: positiveInteger('waitTimeoutMs', options.waitTimeoutMs, DEFAULT_WAIT_TIMEOUT_MS),
    onStoreError: oneOf('onStoreError', options.onStoreError, ['fail-closed', 'fail-open'] as const),
    storeTimeoutMs: positiveInteger('storeTimeoutMs', options.storeTimeoutMs, DEFAULT_STORE_TIMEOUT_MS),
    onEvent: fn('onEvent', options.onEvent),
  };
}

function resolveStore(store: Store | undefined): Store {
  if (store === undefined) return new MemoryStore();
  for (const method of ['acquire', 'complete', 'renew', 'release', 'get', 'sweep', 'close'] as const) {
    if (typeof (store as unknown as Record<string, unknown>)?.[method] !== 'function') {
      throw new TypeError(`options.store must implement the store contract: ${method}() is missing`);
    }
  }
  return store;
}

function resolveMethods(methods: readonly string[] | undefined): ReadonlySet<string> {
  if (methods === undefined) return new Set(DEFAULT_METHODS);
  if (!Array.isArray(methods) || methods.length === 0) {
    throw new TypeError(
      'options.methods must be a non-empty array of HTTP methods, such as ["POST", "PATCH"]',
    );
  }
  for (const method of methods) {
    if (typeof method !== 'string' || !METHOD_TOKEN.test(method)) {
      throw new TypeError(`options.methods contains ${JSON.stringify(method)}, which is not an HTTP method`);
    }
  }
  return new Set(methods.map((method) => method.toUpperCase()));
}

function positiveInteger(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`options.${name} must be a positive integer (got ${String(value)})`);
  }
  return value;
}

function boolean(name: string, value: boolean | undefined, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new TypeError(`options.${name} must be true or false`);
  return value;
}

function oneOf<const T extends readonly string[]>(
  name: string,
  value: T[number] | undefined,
  allowed: T,
): T[number] {
  if (value === undefined) return allowed[0]!;
  if (!allowed.includes(value)) {
    throw new TypeError(
      `options.${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')} (got ${JSON.stringify(value)})`,
    );
  }
  return value;
}

function fn<F>(name: string, value: F | undefined): F | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'function') throw new TypeError(`options.${name} must be a function`);
  return value;
}
