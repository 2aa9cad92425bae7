/**
 * @module The framework-neutral engine: every decision of SPEC K, M, F, R, L, T, S and P.
 */
import { randomUUID } from 'node:crypto';
import { type Deadline, Deadlines } from './deadlines.js';
import {
  IdempotencyError,
  KeyInUseError,
  KeyNotAllowedError,
  KeyReusedError,
  MissingKeyError,
  ResponseIncompleteError,
  StoreTimeoutError,
  StoreUnavailableError,
} from './errors.js';
import type { EngineEvent, EngineEventType } from './events.js';
import { defaultFingerprint, defaultScope } from './fingerprint.js';
import { IDEMPOTENCY_KEY_HEADER, parseKey, redactKey } from './key.js';
import { type IdempotencyOptions, type ResolvedOptions, resolveOptions } from './options.js';
import type { IdempotencyRequest } from './request.js';
import type { AcquireResult, Awaitable, HeaderMap, Store, StoredResponse } from './store.js';

/** Replays carry this header (R2). */
export const REPLAYED_HEADER = 'idempotent-replayed';
/** Replays of responses recorded without their body carry this header (R7). */
export const BODY_OMITTED_HEADER = 'idempotent-body-omitted';

/** What an adapter hands the engine: the request, with the body still unread. */
export interface IncomingRequest<Raw = unknown> {
  readonly method: string;
  readonly url: string;
  header(name: string): string | undefined;
  /**
   * Read the whole body; called only for keyed requests. Must reject (or throw) with
   * {@link RequestTooLargeError} once more than `limit` bytes arrive (R7). A body already in hand
   * may be returned as it is, without a promise.
   */
  readBody(limit: number): Awaitable<Uint8Array>;
  readonly raw: Raw;
}

/** A response for the adapter to write: status, headers, body bytes. */
export interface OutgoingResponse {
  status: number;
  headers: HeaderMap;
  body: Uint8Array;
}

/** Run the handler without protection: no key, another method, or fail-open. */
export interface PassDecision {
  readonly action: 'pass';
}
/** Write `response` (a replay or a problem); the handler must not run. */
export interface RespondDecision {
  readonly action: 'respond';
  readonly response: OutgoingResponse;
}
/** Run the handler, then hand its response to `execution`. */
export interface ExecuteDecision {
  readonly action: 'execute';
  readonly execution: Execution;
}
export type Decision = PassDecision | RespondDecision | ExecuteDecision;

/** The decision for requests the engine does not touch; adapters may compare by identity. */
export const PASS: PassDecision = Object.freeze({ action: 'pass' });

// R2: never recorded; hop-by-hop fields, cookies, and fields the server sets afresh.
const UNRECORDED_HEADERS = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'set-cookie',
  'date',
  'content-length',
]);

/**
 * The idempotency engine. Adapters call {@link Engine.begin} for each request and act on the decision.
 *
 * @example
 * const engine = new Engine({ store: new MemoryStore() });
 * const decision = engine.begin(request);
 */
export class Engine<Raw = unknown> {
  readonly options: ResolvedOptions<Raw>;
  readonly store: Store;
  // S2: every store call's timeout, on one timer.
  readonly #storeDeadlines: Deadlines;
  /** L3: when each execution's lease is next renewed, on one timer. @internal */
  readonly heartbeats: Deadlines;

  constructor(options?: IdempotencyOptions<Raw>) {
    this.options = resolveOptions(options);
    this.store = this.options.store;
    this.#storeDeadlines = new Deadlines(this.options.storeTimeoutMs);
    this.heartbeats = new Deadlines(Math.max(1, Math.floor(this.options.lockTimeoutMs / 3)));
  }

  /**
   * Whether a request with this method can be anything but passed through untouched: keys take
   * effect on it (M1), or a key on it is answered 400 (M2, `onSafeMethodKey: 'reject'`). Adapters
   * that hook routes one by one (Fastify) leave the other routes alone.
   */
  handles(method: string): boolean {
    // A keyed request that passes untouched is one the engine never acts on.
    return !this.passes(method.toUpperCase(), true);
  }

  /**
   * Decide what happens to one request. Returns {@link PASS} synchronously for requests the engine
   * does not touch (K6, M2, M3), so unkeyed traffic costs a header look-up. A keyed request is
   * decided synchronously too when everything it needs is at hand (a body already read, an
   * in-process store such as the MemoryStore or SQLite, sync `scope`/`fingerprint` callbacks);
   * otherwise the decision is a promise. Never rejects for bad input: every rejection is a problem
   * response (P1). Errors thrown by the user's `scope` or `fingerprint` callbacks reject the promise.
   */
  begin(request: IncomingRequest<Raw>): Decision | Promise<Decision> {
    const options = this.options;
    const header = request.header(IDEMPOTENCY_KEY_HEADER);
    if (this.passes(request.method, header !== undefined)) return PASS;
    if (!options.methods.has(request.method)) {
      return this.#reject(request, new KeyNotAllowedError(request.method), performance.now());
    }
    if (header === undefined) {
      return this.#reject(request, new MissingKeyError(request.method), performance.now());
    }
    return this.#beginKeyed(request, header);
  }

  /**
   * Whether a request with this method, with or without an `Idempotency-Key`, passes untouched
   * (K6, M2, M3): what {@link Engine.begin} answers with {@link PASS}. Adapters ask first, so that
   * unkeyed traffic costs them no view of the request at all.
   */
  passes(method: string, keyed: boolean): boolean {
    const options = this.options;
    // K6, M2: other methods pass unread, unless told to reject keys on them.
    if (!options.methods.has(method)) return !keyed || options.onSafeMethodKey === 'ignore';
    // M3: no key passes, unless one is required.
    return !keyed && !options.required;
  }

  // Plain functions rather than async ones, here and down to the store: a request whose body is
  // read and whose store answers in-process is decided without a promise, a microtask or an async
  // frame, which is most of what a replay costs otherwise.
  #beginKeyed(incoming: IncomingRequest<Raw>, header: string): Decision | Promise<Decision> {
    const started = performance.now();
    const key = parseKey(header);
    if (typeof key !== 'string') return this.#reject(incoming, key, started);
    let body: Awaitable<Uint8Array>;
    try {
      body = incoming.readBody(this.options.maxRequestBytes);
    } catch (error) {
      // Any other error rejects the decision, as it would have from a promise.
      if (error instanceof IdempotencyError) return this.#reject(incoming, error, started, key);
      return Promise.reject(error);
    }
    if (isPromiseLike(body)) {
      return Promise.resolve(body).then(
        (bytes) => this.#identify(incoming, key, bytes, started),
        (error: unknown) => this.#unreadable(incoming, error, started, key),
      );
    }
    return this.#identify(incoming, key, body, started);
  }

  /** R7 and the like: a body that could not be read under the rules is a problem response. */
  #unreadable(request: IncomingRequest<Raw>, error: unknown, started: number, key: string): RespondDecision {
    if (error instanceof IdempotencyError) return this.#reject(request, error, started, key);
    throw error;
  }

  /** F1, S1: the request's scope and fingerprint, then the store. */
  #identify(
    incoming: IncomingRequest<Raw>,
    key: string,
    body: Uint8Array,
    started: number,
  ): Decision | Promise<Decision> {
    const request: IdempotencyRequest<Raw> = {
      method: incoming.method,
      url: incoming.url,
      header: (name) => incoming.header(name),
      body,
      raw: incoming.raw,
    };
    const options = this.options;
    let scope: Awaitable<string>;
    let fingerprint: Awaitable<string> | undefined;
    try {
      scope = options.scope ? options.scope(request) : defaultScope(request);
      // The fingerprint callback runs only once the scope is known, as it would after an await.
      if (typeof scope === 'string') {
        fingerprint = options.fingerprint ? options.fingerprint(request) : defaultFingerprint(request);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    if (typeof scope === 'string' && typeof fingerprint === 'string') {
      return new RequestContext(this, request, scope, key, fingerprint, started).acquire();
    }
    return this.#identifyLater(request, key, started, scope, fingerprint);
  }

  /**
   * {@link Engine.#identify} once a callback returned a promise (or something else: an error). The
   * fingerprint was computed already when the scope came back as a string, and not otherwise.
   */
  async #identifyLater(
    request: IdempotencyRequest<Raw>,
    key: string,
    started: number,
    pendingScope: Awaitable<string>,
    pendingFingerprint: Awaitable<string> | undefined,
  ): Promise<Decision> {
    const options = this.options;
    const fingerprinted = typeof pendingScope === 'string';
    const scope = await pendingScope;
    if (typeof scope !== 'string') throw new TypeError('options.scope must return a string');
    const fingerprint = await (fingerprinted
      ? pendingFingerprint
      : options.fingerprint
        ? options.fingerprint(request)
        : defaultFingerprint(request));
    if (typeof fingerprint !== 'string') throw new TypeError('options.fingerprint must return a string');
    return await new RequestContext(this, request, scope, key, fingerprint, started).acquire();
  }

  #reject(
    request: { method: string; url: string },
    error: IdempotencyError,
    started: number,
    key?: string,
  ): RespondDecision {
    this.emit('rejected', request, started, 0, { key, status: error.status, code: error.code });
    return { action: 'respond', response: problemResponse(error) };
  }

  /**
   * Wait for a store call's promise under `storeTimeoutMs` (S2: a hung store must not hang
   * requests). An answer already in hand needs no timeout and never comes here. Callers make the
   * call themselves, inside their own `try`, so a store that throws rather than rejects is handled
   * the same way.
   * @internal
   */
  callStore<T>(operation: string, pending: PromiseLike<T>): Promise<T> {
    const deadlines = this.#storeDeadlines;
    // One promise and one list entry per call (no Promise.race, no timer of its own): this runs two
    // or three times per keyed request.
    return new Promise<T>((resolve, reject) => {
      const deadline = deadlines.add(() => reject(new StoreTimeoutError(operation, deadlines.ms)));
      pending.then(
        (value) => {
          deadline.cancel();
          resolve(value);
        },
        (error: unknown) => {
          deadline.cancel();
          reject(error);
        },
      );
    });
  }

  /** @internal */
  emit(
    type: EngineEventType,
    request: { method: string; url: string },
    started: number,
    storeMs: number,
    extra: Partial<EngineEvent>,
  ): void {
    const onEvent = this.options.onEvent;
    if (onEvent === undefined) return;
    const event: EngineEvent = {
      type,
      method: request.method,
      url: request.url,
      durationMs: performance.now() - started,
      storeMs,
      ...extra,
    };
    if (event.key !== undefined) event.key = redactKey(event.key);
    try {
      onEvent(event);
    } catch {
      // A faulty listener must not change the outcome of a request.
    }
  }

  /** Stop using the store: closes it. Safe to call twice. */
  close(): Promise<void> {
    return this.store.close();
  }
}

/**
 * One keyed request on its way through the store.
 * @internal
 */
export class RequestContext<Raw> {
  readonly token = newToken();
  storeMs = 0;
  #retryDelay = 10;

  constructor(
    readonly engine: Engine<Raw>,
    readonly request: IdempotencyRequest<Raw>,
    readonly scope: string,
    readonly key: string,
    readonly fingerprint: string,
    readonly started: number,
  ) {}

  /** Ask the store for the record (L1, L5) and decide on what it holds. */
  acquire(): Decision | Promise<Decision> {
    const engine = this.engine;
    const before = performance.now();
    let result: Awaitable<AcquireResult>;
    try {
      result = engine.store.acquire({
        scope: this.scope,
        key: this.key,
        fingerprint: this.fingerprint,
        token: this.token,
        leaseMs: engine.options.lockTimeoutMs,
      });
    } catch (error) {
      this.storeMs += performance.now() - before;
      return this.storeFailed(error);
    }
    if (!isPromiseLike(result)) {
      this.storeMs += performance.now() - before;
      return this.#decide(result);
    }
    return engine.callStore('acquire', result).then(
      (found) => {
        this.storeMs += performance.now() - before;
        return this.#decide(found);
      },
      (error: unknown) => {
        this.storeMs += performance.now() - before;
        return this.storeFailed(error);
      },
    );
  }

  #decide(result: AcquireResult): Decision | Promise<Decision> {
    if (result.state === 'acquired') {
      return { action: 'execute', execution: new Execution(this) };
    }
    // F2: checked before the lock, whether the record is in flight or completed.
    if (result.fingerprint !== this.fingerprint) {
      return this.respond('mismatch', new KeyReusedError());
    }
    if (result.state === 'completed') {
      const response = replayResponse(result.response);
      this.emit('replayed', { status: response.status });
      return { action: 'respond', response };
    }
    // L2: in flight with the same request.
    if (this.engine.options.onInFlight === 'reject') return this.respond('conflict', new KeyInUseError());
    return this.#waitAndRetry();
  }

  /** L2 `onInFlight: 'wait'`: ask again after a pause, backing off, until `waitTimeoutMs` runs out. */
  async #waitAndRetry(): Promise<Decision> {
    const now = performance.now();
    const deadline = this.started + this.engine.options.waitTimeoutMs;
    if (now >= deadline) return this.respond('conflict', new KeyInUseError());
    const delay = this.#retryDelay;
    this.#retryDelay = Math.min(delay * 2, 250);
    await sleep(Math.min(delay, deadline - now));
    return await this.acquire();
  }

  storeFailed(error: unknown): Decision {
    const failOpen = this.engine.options.onStoreError === 'fail-open';
    if (failOpen) {
      this.emit('store_error', { failOpen, error });
      return PASS;
    }
    const problem = new StoreUnavailableError(error);
    this.emit('store_error', { failOpen, error, status: problem.status, code: problem.code });
    return { action: 'respond', response: problemResponse(problem) };
  }

  respond(type: EngineEventType, error: IdempotencyError): RespondDecision {
    this.emit(type, { status: error.status, code: error.code });
    return { action: 'respond', response: problemResponse(error) };
  }

  emit(type: EngineEventType, extra: Partial<EngineEvent>): void {
    if (this.engine.options.onEvent === undefined) return;
    this.engine.emit(type, this.request, this.started, this.storeMs, { key: this.key, ...extra });
  }
}

/**
 * The handle of a request that won the lock: the adapter runs the handler and hands the response
 * here, which records it before the adapter releases it to the client (R6). The lease is renewed
 * while the handler runs (L3); every store write is fenced by the acquisition's token (L4).
 */
export class Execution {
  readonly #context: RequestContext<unknown>;
  #heartbeat: Deadline | undefined;
  #settled = false;
  #lost = false;

  /** @internal */
  // biome-ignore lint/suspicious/noExplicitAny: the execution does not depend on the raw request type
  constructor(context: RequestContext<any>) {
    this.#context = context;
    this.#beat();
  }

  // L3: renew every third of the lease while the handler runs.
  #beat(): void {
    this.#heartbeat = this.#context.engine.heartbeats.add(() => {
      this.#beat();
      this.#renew(this.#context.engine.options.lockTimeoutMs);
    });
  }

  /** The request being executed (with its body), for adapters that must hand the body back to the app. */
  get request(): IdempotencyRequest {
    return this.#context.request;
  }

  /** The largest body that is recorded (R7); adapters stop buffering past it. */
  get maxResponseBytes(): number {
    return this.#context.engine.options.maxResponseBytes;
  }

  /** True once a renewal found that another request took the lease over (L4). */
  get lost(): boolean {
    return this.#lost;
  }

  /**
   * R7: whether a response with these headers must be streamed rather than buffered
   * (an event stream, or a declared length over `maxResponseBytes`).
   */
  streams(headers: HeaderMap): boolean {
    const type = first(headers['content-type']);
    if (type?.trimStart().toLowerCase().startsWith('text/event-stream')) return true;
    const length = first(headers['content-length']);
    return length !== undefined && Number(length) > this.maxResponseBytes;
  }

  /**
   * Record the handler's complete response (R1, R6) and return it for the adapter to send.
   * A store failure here is reported, never thrown: the handler already acted, so its response
   * still goes to the client.
   */
  complete(response: OutgoingResponse): Promise<OutgoingResponse> {
    const omitted = response.body.byteLength > this.maxResponseBytes || this.streams(response.headers);
    const writing = this.#finish(response.status, response.headers, omitted ? EMPTY : response.body, omitted);
    return writing === undefined ? Promise.resolve(response) : writing.then(() => response);
  }

  /**
   * R7: record status and headers only, before streaming a body too large to keep (or an event
   * stream) to the first caller. Replays carry `Idempotent-Body-Omitted: true`.
   */
  completeWithoutBody(status: number, headers: HeaderMap): Promise<void> {
    return this.#finish(status, headers, EMPTY, true) ?? SETTLED;
  }

  /**
   * R3: the handler failed and no framework produced an error response, or the response broke off
   * midway: record a 500 problem so a retry never re-runs the handler, and return it.
   */
  fail(cause?: unknown): Promise<OutgoingResponse> {
    const response = problemResponse(new ResponseIncompleteError(cause));
    const writing = this.#finish(response.status, response.headers, response.body, false);
    return writing === undefined ? Promise.resolve(response) : writing.then(() => response);
  }

  /** Drop the lock without an outcome, so a retry runs the handler again (G2, fail-open paths). */
  release(): Promise<void> {
    return (this.#settle() ? this.#write(undefined, undefined) : undefined) ?? SETTLED;
  }

  /** The outcome's store write; undefined when it is done already (or there is none to make). */
  #finish(
    status: number,
    headers: HeaderMap,
    body: Uint8Array,
    bodyOmitted: boolean,
  ): Promise<void> | undefined {
    if (!this.#settle()) return undefined;
    if (!shouldRecord(this.#context.engine.options.record, status)) return this.#write(undefined, status);
    return this.#write({ status, headers: recordableHeaders(headers), body, bodyOmitted }, status);
  }

  /**
   * The one fenced store write of an execution: complete with `stored`, or release without an
   * outcome when it is undefined. A store failure is reported, not thrown. Returns a promise only
   * when the store answers with one.
   */
  #write(stored: StoredResponse | undefined, status: number | undefined): Promise<void> | undefined {
    const context = this.#context;
    const { engine, scope, key, token } = context;
    const before = performance.now();
    let written: Awaitable<boolean>;
    try {
      written =
        stored === undefined
          ? engine.store.release(scope, key, token)
          : engine.store.complete(scope, key, token, stored, engine.options.ttlMs);
    } catch (error) {
      this.#wrote(stored, status, before, undefined, error);
      return undefined;
    }
    if (!isPromiseLike(written)) {
      this.#wrote(stored, status, before, written);
      return undefined;
    }
    return engine.callStore(stored === undefined ? 'release' : 'complete', written).then(
      (value) => this.#wrote(stored, status, before, value),
      (error: unknown) => this.#wrote(stored, status, before, undefined, error),
    );
  }

  /** Report a store write: `written` is what the store answered, undefined when it failed with `error`. */
  #wrote(
    stored: StoredResponse | undefined,
    status: number | undefined,
    before: number,
    written: boolean | undefined,
    error?: unknown,
  ): void {
    const context = this.#context;
    context.storeMs += performance.now() - before;
    if (written === undefined) context.emit('store_error', { error, failOpen: false });
    if (stored === undefined) context.emit('released', status === undefined ? {} : { status });
    else if (written !== undefined) context.emit(written ? 'executed' : 'fenced', { status });
  }

  #settle(): boolean {
    if (this.#settled) return false;
    this.#settled = true;
    this.#heartbeat?.cancel();
    return true;
  }

  #renew(leaseMs: number): void {
    const context = this.#context;
    let renewed: Awaitable<boolean>;
    try {
      renewed = context.engine.store.renew(context.scope, context.key, context.token, leaseMs);
    } catch (error) {
      this.#renewFailed(error);
      return;
    }
    if (!isPromiseLike(renewed)) this.#renewed(renewed);
    else
      context.engine.callStore('renew', renewed).then(
        (value) => this.#renewed(value),
        (error: unknown) => this.#renewFailed(error),
      );
  }

  #renewed(renewed: boolean): void {
    if (!renewed && !this.#settled) {
      // L4: someone took the lease over; our outcome will be refused. Stop renewing.
      this.#lost = true;
      this.#heartbeat?.cancel();
    }
  }

  #renewFailed(error: unknown): void {
    // A missed renewal is retried on the next beat; the lease outlives two of them.
    this.#context.emit('store_error', { error, failOpen: false });
  }
}

const EMPTY = new Uint8Array(0);
const SETTLED: Promise<void> = Promise.resolve();
const encoder = new TextEncoder();

function shouldRecord(policy: 'all' | 'non-5xx' | '2xx', status: number): boolean {
  if (policy === 'all') return true;
  if (policy === 'non-5xx') return status < 500;
  return status >= 200 && status < 300;
}

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** R2: the end-to-end headers worth replaying. */
export function recordableHeaders(headers: HeaderMap): HeaderMap {
  const connection = first(headers['connection']);
  const named = connection ? new Set(connection.toLowerCase().split(/\s*,\s*/)) : undefined;
  const kept: HeaderMap = {};
  for (const name in headers) {
    const lower = name.toLowerCase();
    if (UNRECORDED_HEADERS.has(lower) || lower.startsWith('proxy-') || named?.has(lower)) continue;
    if (lower === '__proto__') continue; // assigned below, it would set the record's prototype
    const value = headers[name];
    if (value === undefined) continue;
    kept[lower] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return kept;
}

/** R2: the recorded response, marked as a replay. */
function replayResponse(stored: StoredResponse): OutgoingResponse {
  // A copy by plain stores: in V8 (Node 20), a spread with more properties after it, or a spread
  // object given new properties, is built on a slow path costing about 1 µs per response. A record
  // read back from JSON may hold an own "__proto__"; stored, it would set the copy's prototype.
  const headers: HeaderMap = {};
  for (const name of Object.keys(stored.headers)) {
    if (name !== '__proto__') headers[name] = stored.headers[name]!;
  }
  headers[REPLAYED_HEADER] = 'true';
  if (stored.bodyOmitted) headers[BODY_OMITTED_HEADER] = 'true';
  return { status: stored.status, headers, body: stored.body };
}

/** P1: an RFC 9457 problem response for one of oncely's own outcomes. */
export function problemResponse(error: IdempotencyError): OutgoingResponse {
  const headers: HeaderMap = {
    'content-type': 'application/problem+json',
    'cache-control': 'no-store',
  };
  if (error.retryAfterSeconds !== undefined) headers['retry-after'] = String(error.retryAfterSeconds);
  return { status: error.status, headers, body: encoder.encode(JSON.stringify(error.toProblem())) };
}

/**
 * L4: a fencing token unique to this acquisition, across every process that shares the store: a
 * random UUID drawn once per process, then a counter. Tokens never leave the server, so they need
 * not be unpredictable; a fresh `randomUUID()` per request costs about 1 µs, most of it building the
 * string.
 */
function newToken(): string {
  tokens++;
  return `${TOKEN_PREFIX}${tokens.toString(36)}`;
}

const TOKEN_PREFIX = `${randomUUID()}.`;
let tokens = 0;

/** Whether a store or a callback answered with a promise (or any thenable) rather than the value. */
function isPromiseLike<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return (
    typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function'
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
