/**
 * @module oncely/client: a `fetch` that sends one Idempotency-Key per operation and retries safely (SPEC C).
 */
import {
  backoffDelay,
  IDEMPOTENCY_KEY_HEADER,
  IDEMPOTENT_METHODS,
  KEY_IN_USE_CODE,
  parseRetryAfter,
  REPLAYED_HEADER,
  RETRYABLE_STATUSES,
  randomKey,
} from './_policy.js';

export { IDEMPOTENCY_KEY_HEADER, KEY_IN_USE_CODE, REPLAYED_HEADER, RETRYABLE_STATUSES };

/** The shape of `fetch`: what `createFetch` takes (option `fetch`) and returns. */
export type FetchLike = (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;

/** What `onRetry` is told before the client waits and tries again. */
export interface RetryInfo {
  /** The attempt that just failed: 1 when the first attempt failed. */
  attempt: number;
  /** How long the client will wait before the next attempt (`Retry-After` or backoff). */
  delayMs: number;
  /** The network error or per-attempt timeout (a `TimeoutError` DOMException), when there was no response. */
  error?: unknown;
  /** The retryable response, when there was one. Its body is cancelled after the hook returns. */
  response?: Response;
  /** The Idempotency-Key sent on every attempt (C1), or undefined for methods that carry none (C3). */
  key: string | undefined;
}

/** Options of {@link createFetch}. Every field is optional. */
export interface ClientOptions {
  /**
   * The underlying fetch, called once per attempt with a `Request`.
   * @default globalThis.fetch (looked up on each call)
   */
  fetch?: FetchLike;
  /**
   * C3/M1: methods that get an Idempotency-Key (and so may be retried). Other methods are retried only
   * when HTTP defines them as idempotent (GET, HEAD, OPTIONS, PUT, DELETE).
   * @default ['POST', 'PATCH']
   */
  methods?: readonly string[];
  /**
   * Retries after the first attempt; 0 turns retrying off.
   * @default 5
   */
  retries?: number;
  /**
   * Time budget from the first attempt: a retry whose wait would end past it is not made.
   * @default Infinity
   */
  maxElapsedMs?: number;
  /**
   * Backoff ceiling of the first retry; it doubles per retry up to `maxDelayMs` (full jitter below it).
   * @default 100
   */
  baseDelayMs?: number;
  /**
   * Largest backoff ceiling.
   * @default 10000
   */
  maxDelayMs?: number;
  /**
   * Largest wait a `Retry-After` header can ask for; longer requests are cut to this.
   * @default 30000
   */
  maxRetryAfterMs?: number;
  /**
   * How long one attempt may wait for response headers before it is aborted and retried.
   * `Infinity` turns the timeout off. Reading the body is not timed.
   * @default 30000
   */
  attemptTimeoutMs?: number;
  /**
   * Uniform random numbers in [0, 1) for jitter; inject a fixed one for deterministic delays.
   * @default Math.random
   */
  random?: () => number;
  /**
   * Called before each wait. Throwing (or rejecting) stops retrying: the call rejects with that error.
   */
  onRetry?: (info: RetryInfo) => void | Promise<void>;
}

const DEFAULT_METHODS = ['POST', 'PATCH'];
const DEFAULT_RETRIES = 5;
const DEFAULT_BASE_DELAY_MS = 100;
const DEFAULT_MAX_DELAY_MS = 10_000;
const DEFAULT_MAX_RETRY_AFTER_MS = 30_000;
const DEFAULT_ATTEMPT_TIMEOUT_MS = 30_000;
/** setTimeout fires at once for longer delays, so no wait may exceed this. */
const MAX_TIMER_MS = 2_147_483_647;
const METHOD_PATTERN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

interface Resolved {
  fetch: FetchLike;
  methods: ReadonlySet<string>;
  retries: number;
  maxElapsedMs: number;
  baseDelayMs: number;
  maxDelayMs: number;
  maxRetryAfterMs: number;
  attemptTimeoutMs: number;
  random: () => number;
  onRetry: ((info: RetryInfo) => void | Promise<void>) | undefined;
}

/**
 * A `fetch` that makes POST and PATCH safe to retry: it sends one random Idempotency-Key per call
 * (or the caller's own) and keeps it on every retry (C1); it retries network errors, per-attempt
 * timeouts, 408, 429, 502, 503, 504 and 409 `idempotency_key_in_use`, honouring a capped
 * `Retry-After`, else capped exponential backoff with full jitter (C2); it never retries 400, 422
 * or a replayed response (C2), and adds no key to other methods (C3).
 *
 * Bodies are re-sent on each attempt, so they must be re-readable: strings, buffers, Blob, FormData
 * and URLSearchParams are; a `ReadableStream` (or async iterable) body on a retryable request is
 * refused up front with a TypeError (unless `retries: 0`). A `Request` input's body is kept in
 * memory (via `clone()`) for the retries.
 *
 * @param options see {@link ClientOptions}; validated here, errors name the option.
 * @returns a function with the signature of `fetch`.
 * @example
 * import { createFetch } from 'oncely/client';
 * const fetch = createFetch({ retries: 3 });
 * const res = await fetch('https://api.example.com/payments', {
 *   method: 'POST',
 *   headers: { 'content-type': 'application/json' },
 *   body: JSON.stringify({ amount: 1000 }),
 * });
 */
export function createFetch(options: ClientOptions = {}): FetchLike {
  const config = resolveClientOptions(options);

  return async function oncelyFetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
    const inputRequest = isRequest(input) ? input : undefined;
    const method = (init?.method ?? inputRequest?.method ?? 'GET').toUpperCase();
    const keyed = config.methods.has(method);
    // C2: a non-idempotent request without a key could act twice if re-sent, so it goes out once, as is.
    if (!keyed && !IDEMPOTENT_METHODS.has(method)) return config.fetch(input, init);
    if (config.retries > 0 && isOneShotBody(init?.body)) {
      throw new TypeError(
        `oncely/client: a ${method} with a ReadableStream body cannot be retried, because a stream can be sent only once. ` +
          'Pass the body as a string, ArrayBuffer, Uint8Array, Blob, FormData or URLSearchParams, or use createFetch({ retries: 0 }) for this request.',
      );
    }
    const callerSignal = init?.signal !== undefined ? init.signal : (inputRequest?.signal ?? null);
    callerSignal?.throwIfAborted();

    // One Request for the whole operation: attempts send clones of it, so the body is re-sent byte for byte.
    const base = new Request(input, init);
    let key: string | undefined;
    if (keyed) {
      // C1: the caller's key wins; otherwise one fresh key for this call, reused on every retry.
      key = base.headers.get(IDEMPOTENCY_KEY_HEADER) ?? randomKey();
      base.headers.set(IDEMPOTENCY_KEY_HEADER, key);
    }

    const started = Date.now();
    for (let attempt = 1; ; attempt++) {
      // The last possible attempt sends the original: nothing is kept for a retry that cannot come.
      const request = attempt > config.retries ? base : base.clone();
      const outcome = await send(config, request, callerSignal);
      let delayMs: number;
      if ('error' in outcome) {
        if (!outcome.retryable) throw outcome.error;
        delayMs = backoff(config, attempt);
      } else {
        const response = outcome.response;
        if (!(await isRetryable(response))) return response;
        const retryAfter = parseRetryAfter(response.headers.get('retry-after'), Date.now());
        delayMs =
          retryAfter === undefined ? backoff(config, attempt) : Math.min(retryAfter, config.maxRetryAfterMs);
      }
      const response = 'response' in outcome ? outcome.response : undefined;
      const error = 'error' in outcome ? outcome.error : undefined;
      // Budget spent: the caller gets the last response as it is, or the last error.
      if (attempt > config.retries || Date.now() - started + delayMs > config.maxElapsedMs) {
        if (response) return response;
        throw error;
      }
      try {
        await config.onRetry?.({ attempt, delayMs, key, ...(response ? { response } : { error }) });
      } finally {
        // A response we will not return must not hold its connection open.
        if (response) discard(response);
      }
      await sleep(delayMs, callerSignal);
    }
  };
}

type Outcome = { response: Response } | { error: unknown; retryable: boolean };

/** One attempt, aborted by the caller's signal or by `attemptTimeoutMs` before headers arrive. */
async function send(config: Resolved, request: Request, callerSignal: AbortSignal | null): Promise<Outcome> {
  const timeout = new AbortController();
  const signal = callerSignal ? anySignal(callerSignal, timeout.signal) : timeout.signal;
  let timedOut = false;
  const timer = Number.isFinite(config.attemptTimeoutMs)
    ? setTimeout(() => {
        timedOut = true;
        timeout.abort(
          new DOMException(
            `No response within attemptTimeoutMs (${config.attemptTimeoutMs} ms)`,
            'TimeoutError',
          ),
        );
      }, config.attemptTimeoutMs)
    : undefined;
  try {
    return { response: await config.fetch(request, { signal }) };
  } catch (error) {
    // The caller's abort ends everything at once, with the caller's reason.
    if (callerSignal?.aborted) throw callerSignal.reason;
    if (timedOut) return { error: timeout.signal.reason, retryable: true };
    // C2: fetch reports network failures (refused, reset, DNS) as TypeError; anything else is a bug to surface.
    return { error, retryable: error instanceof TypeError };
  } finally {
    clearTimeout(timer);
  }
}

/** C2: whether a response asks to be tried again. */
async function isRetryable(response: Response): Promise<boolean> {
  // C2: a replay is the recorded outcome; the server would answer the same again.
  if (response.headers.get(REPLAYED_HEADER)?.trim().toLowerCase() === 'true') return false;
  if (RETRYABLE_STATUSES.has(response.status)) return true;
  // L2: only the in-flight 409 clears up by waiting; any other conflict is the application's answer.
  if (response.status === 409) return isKeyInUse(response);
  return false;
}

async function isKeyInUse(response: Response): Promise<boolean> {
  if (!(response.headers.get('content-type') ?? '').includes('json')) return false;
  try {
    const problem: unknown = await response.clone().json();
    return (problem as { code?: unknown } | null)?.code === KEY_IN_USE_CODE;
  } catch {
    return false;
  }
}

function backoff(config: Resolved, attempt: number): number {
  return backoffDelay(attempt, config.baseDelayMs, config.maxDelayMs, config.random());
}

function discard(response: Response): void {
  response.body?.cancel().catch(() => {});
}

function sleep(ms: number, signal: AbortSignal | null): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function anySignal(a: AbortSignal, b: AbortSignal): AbortSignal {
  if (typeof AbortSignal.any === 'function') return AbortSignal.any([a, b]);
  // Older browsers: forward by hand (the listeners live as long as the signals).
  const controller = new AbortController();
  for (const signal of [a, b]) {
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    signal.addEventListener('abort', () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}

function isRequest(input: unknown): input is Request {
  return typeof Request !== 'undefined' && input instanceof Request;
}

/** A body that a stream reader consumes: sent once, it is gone. */
function isOneShotBody(body: unknown): boolean {
  if (body === null || typeof body !== 'object') return false;
  if (typeof ReadableStream !== 'undefined' && body instanceof ReadableStream) return true;
  return Symbol.asyncIterator in body;
}

function resolveClientOptions(options: ClientOptions): Resolved {
  if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
  const fetchImpl = options.fetch;
  if (fetchImpl !== undefined && typeof fetchImpl !== 'function') {
    throw new TypeError('options.fetch must be a fetch function');
  }
  const methods = options.methods ?? DEFAULT_METHODS;
  if (!Array.isArray(methods) || !methods.every((m) => typeof m === 'string' && METHOD_PATTERN.test(m))) {
    throw new TypeError('options.methods must be an array of HTTP method names, e.g. ["POST", "PATCH"]');
  }
  if (options.random !== undefined && typeof options.random !== 'function') {
    throw new TypeError('options.random must be a function returning a number in [0, 1)');
  }
  if (options.onRetry !== undefined && typeof options.onRetry !== 'function') {
    throw new TypeError('options.onRetry must be a function');
  }
  const baseDelayMs = integer('baseDelayMs', options.baseDelayMs, DEFAULT_BASE_DELAY_MS, 0, MAX_TIMER_MS);
  return {
    // Look the global up per call, and call it as a method-less function, which browsers require.
    fetch: fetchImpl ?? ((input, init) => globalThis.fetch(input, init)),
    methods: new Set(methods.map((m) => m.toUpperCase())),
    retries: integer('retries', options.retries, DEFAULT_RETRIES, 0, Number.MAX_SAFE_INTEGER),
    maxElapsedMs: duration(
      'maxElapsedMs',
      options.maxElapsedMs,
      Number.POSITIVE_INFINITY,
      Number.MAX_SAFE_INTEGER,
    ),
    baseDelayMs,
    maxDelayMs: integer(
      'maxDelayMs',
      options.maxDelayMs,
      Math.max(DEFAULT_MAX_DELAY_MS, baseDelayMs),
      0,
      MAX_TIMER_MS,
    ),
    maxRetryAfterMs: integer(
      'maxRetryAfterMs',
      options.maxRetryAfterMs,
      DEFAULT_MAX_RETRY_AFTER_MS,
      0,
      MAX_TIMER_MS,
    ),
    attemptTimeoutMs: duration(
      'attemptTimeoutMs',
      options.attemptTimeoutMs,
      DEFAULT_ATTEMPT_TIMEOUT_MS,
      MAX_TIMER_MS,
    ),
    random: options.random ?? Math.random,
    onRetry: options.onRetry,
  };
}

function integer(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new TypeError(`options.${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** A positive whole number of milliseconds, or Infinity for "no limit". */
function duration(name: string, value: number | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  if (value === Number.POSITIVE_INFINITY) return value;
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new TypeError(
      `options.${name} must be a positive integer of milliseconds (at most ${max}) or Infinity`,
    );
  }
  return value;
}
