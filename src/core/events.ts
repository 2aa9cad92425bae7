/**
 * @module Events the engine reports through `onEvent`, one per decision.
 */
import type { ProblemCode } from './errors.js';

/** What the engine decided for one keyed request. */
export type EngineEventType =
  /** The handler ran and its outcome was recorded (R1). */
  | 'executed'
  /** The handler ran but the outcome was not recorded (`record` option, or released by the caller): the key is free again. */
  | 'released'
  /** The recorded outcome was replayed (R2). */
  | 'replayed'
  /** 409: the key is in flight (L2). */
  | 'conflict'
  /** 422: the key was used with another request (F2). */
  | 'mismatch'
  /** 400 or 413: bad key, missing key, key not allowed, body too large (K, M, R7). */
  | 'rejected'
  /** The store failed or timed out (S2); `failOpen` tells whether the handler ran unprotected. */
  | 'store_error'
  /** The lease was taken over while the handler ran; its outcome was refused by the store (L4). */
  | 'fenced';

/** One decision, with its timing. Keys appear only as their first 8 characters (S3). */
export interface EngineEvent {
  type: EngineEventType;
  method: string;
  url: string;
  /** The key's first 8 characters, when the request had a valid key. */
  key?: string;
  /** The response status sent (or to be sent). */
  status?: number;
  /** The problem code, when oncely answered itself. */
  code?: ProblemCode;
  /** ms from the start of the decision to this event (for `executed`, includes the handler). */
  durationMs: number;
  /** ms spent waiting on the store for this request so far. */
  storeMs: number;
  /** For `store_error`: whether the handler ran unprotected (`onStoreError: 'fail-open'`). */
  failOpen?: boolean;
  error?: unknown;
}
