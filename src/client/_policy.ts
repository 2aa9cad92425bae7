/**
 * @module The client's retry policy as pure functions (SPEC C1–C3): which outcomes are retried and
 * how long to wait. Internal to oncely/client; no Node-only APIs (the client runs in browsers).
 */

/** K1: the request header carrying the key. Same value as the core's, duplicated to keep the client tiny. */
export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key';
/** R2: the header marking a replayed response. Same value as the core's `REPLAYED_HEADER`. */
export const REPLAYED_HEADER = 'idempotent-replayed';
/** P1/L2: the problem `code` of a 409 answered while the first request with the key still runs. */
export const KEY_IN_USE_CODE = 'idempotency_key_in_use';

/** C2: statuses that say "try again later", whatever the body. 409 is retried only with KEY_IN_USE_CODE. */
export const RETRYABLE_STATUSES: ReadonlySet<number> = new Set([408, 429, 502, 503, 504]);

/** M2: methods HTTP already defines as idempotent, so retrying them without a key is safe. */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/**
 * Milliseconds a `Retry-After` value asks for: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
 * A date in the past means 0. Returns undefined for a missing or unparseable value.
 */
export function parseRetryAfter(value: string | null, now: number): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  // An HTTP-date always names its weekday and month; this keeps "-1" from parsing as a year.
  const date = /[A-Za-z]/.test(trimmed) ? Date.parse(trimmed) : Number.NaN;
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

/**
 * C2: capped exponential backoff with full jitter: a uniform pick in
 * [0, min(maxDelayMs, baseDelayMs · 2^(retry−1))). Full jitter spreads a crowd of clients that
 * failed together, so they do not come back together.
 *
 * @param retry 1 for the first retry.
 * @param random a uniform number in [0, 1).
 */
export function backoffDelay(retry: number, baseDelayMs: number, maxDelayMs: number, random: number): number {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** (retry - 1));
  return Math.floor(ceiling * random);
}

/**
 * C1: a random UUID v4. `crypto.randomUUID` exists only in secure contexts in browsers; plain
 * http pages still have `crypto.getRandomValues`, so build the UUID from it there.
 */
export function randomKey(): string {
  const webCrypto = globalThis.crypto;
  if (typeof webCrypto.randomUUID === 'function') return webCrypto.randomUUID();
  const bytes = webCrypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
