/**
 * @module The store contract: the atomic operations every oncely store implements.
 */

/**
 * A value, or a promise of it. Stores whose backend answers in-process (memory, SQLite) return the
 * value itself: the engine then decides without a promise or a timer (a value in hand cannot hang).
 */
export type Awaitable<T> = T | Promise<T>;

/** Response headers as recorded: lower-case names, a string or a list for repeated fields. */
export type HeaderMap = Record<string, string | string[]>;

/** A response as the store keeps it (R1, R5). */
export interface StoredResponse {
  status: number;
  headers: HeaderMap;
  /** The body bytes; empty when `bodyOmitted` (R7). */
  body: Uint8Array;
  /** R7: the body was too large or a stream, so replays carry status and headers only. */
  bodyOmitted: boolean;
}

/** Arguments of {@link Store.acquire}. */
export interface AcquireInput {
  scope: string;
  key: string;
  fingerprint: string;
  /** The fencing token the new in-flight record will carry if this call wins (L4). Unique per call. */
  token: string;
  /** How long the lease lasts unless renewed (L3). */
  leaseMs: number;
}

/** What {@link Store.acquire} found. */
export type AcquireResult =
  /** The caller now owns the in-flight record with its token: run the handler. */
  | { state: 'acquired' }
  /** Another caller holds a live lease (L1). */
  | { state: 'in-flight'; fingerprint: string }
  /** The record is completed and not expired (R2). */
  | { state: 'completed'; fingerprint: string; response: StoredResponse };

/** A record as {@link Store.get} reports it, for operators. */
export interface RecordView {
  scope: string;
  key: string;
  state: 'in-flight' | 'completed';
  fingerprint: string;
  /** ms since epoch when the record was created (in-flight) or completed. */
  updatedAt: number;
  /** ms since epoch when the lease (in-flight) or the record (completed) runs out. */
  expiresAt: number;
  response?: StoredResponse;
}

/**
 * The store contract (DESIGN "store contract"). Each method is one atomic round trip to the backend.
 * A record is addressed by (scope, key); a store keeps both exactly as given (S3).
 * Each method may answer with a promise (a network round trip; the engine waits at most
 * `storeTimeoutMs` for it, S2) or, for a store working in this process, with the value itself.
 *
 * Expired records — in-flight ones whose lease ran out, completed ones past their TTL — must behave
 * as absent to every method (T1, T2), whether or not they have been swept yet.
 */
export interface Store {
  /**
   * Create an in-flight record owned by `input.token` when none is live, or take over one whose
   * lease ran out (L3); otherwise report what is there. Among concurrent callers exactly one wins (L5).
   */
  acquire(input: AcquireInput): Awaitable<AcquireResult>;
  /**
   * Turn the in-flight record owned by `token` into a completed one kept for `ttlMs`.
   * Returns false, changing nothing, when `token` no longer owns the record (L4).
   */
  complete(
    scope: string,
    key: string,
    token: string,
    response: StoredResponse,
    ttlMs: number,
  ): Awaitable<boolean>;
  /** Extend the lease of the record owned by `token` to `leaseMs` from now; false if the token lost it (L4). */
  renew(scope: string, key: string, token: string, leaseMs: number): Awaitable<boolean>;
  /** Delete the in-flight record owned by `token` without an outcome; false if the token lost it. */
  release(scope: string, key: string, token: string): Awaitable<boolean>;
  /** The live record for (scope, key), or undefined. */
  get(scope: string, key: string): Awaitable<RecordView | undefined>;
  /** Remove up to `limit` expired records (T2); returns how many were removed. */
  sweep(limit?: number): Promise<number>;
  /** Release what the store holds (timers, statements). Safe to call twice. Never closes a client the user passed in. */
  close(): Promise<void>;
}
