/**
 * @module Request fingerprints (SPEC F1) and the default scope (SPEC S1).
 */
import { createHash } from 'node:crypto';
import type { IdempotencyRequest } from './request.js';

const SEPARATOR = new Uint8Array([0]);

/**
 * F1: SHA-256 over the method, the path with its query, the Content-Type and the body bytes.
 * Fields are NUL-separated, which none of the header fields can contain, so no two requests collide
 * by shifting bytes between fields.
 */
export function defaultFingerprint(request: IdempotencyRequest): string {
  return createHash('sha256')
    .update(request.method)
    .update(SEPARATOR)
    .update(request.url)
    .update(SEPARATOR)
    .update(request.header('content-type') ?? '')
    .update(SEPARATOR)
    .update(request.body)
    .digest('hex');
}

/** S1: keys are namespaced by a SHA-256 of the `Authorization` header (empty when absent). */
export function defaultScope(request: IdempotencyRequest): string {
  const authorization = request.header('authorization') ?? '';
  // Most traffic repeats the last credential (or has none): hash each distinct value once in a row.
  if (authorization === lastAuthorization) return lastScope;
  const scope = createHash('sha256').update(authorization).digest('hex');
  lastAuthorization = authorization;
  lastScope = scope;
  return scope;
}

let lastAuthorization = '';
let lastScope = createHash('sha256').update('').digest('hex');
