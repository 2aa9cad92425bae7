/**
 * @module Request fingerprints (SPEC F1) and the default scope (SPEC S1).
 */
import { createHash, hash } from 'node:crypto';
import type { IdempotencyRequest } from './request.js';

/**
 * F1: SHA-256 over the method, the path with its query, the Content-Type and the body bytes.
 * Fields are NUL-separated, which none of the header fields can contain, so no two requests collide
 * by shifting bytes between fields.
 */
export function defaultFingerprint(request: IdempotencyRequest): string {
  const body = request.body;
  const head = `${request.method}\0${request.url}\0${request.header('content-type') ?? ''}\0`;
  const headLength = Buffer.byteLength(head);
  const length = headLength + body.byteLength;
  if (length > SCRATCH_LIMIT) {
    return createHash('sha256').update(head).update(body).digest('hex');
  }
  // Small inputs: copied into one reused buffer and hashed in one shot, several times cheaper than
  // a Hash object. Not a slice of Buffer's shared pool: that would keep its 8 KiB slab alive for as
  // long as any neighbour lives, such as a recorded body a MemoryStore keeps for the whole TTL.
  scratch.write(head, 0, headLength, 'utf8');
  scratch.set(body, headLength);
  // Safe to reuse: the hash is computed before this returns, so no two calls share the buffer.
  return hash('sha256', scratch.subarray(0, length), 'hex');
}

// Past this size, copying the input would cost more than the Hash object saves.
const SCRATCH_LIMIT = 16 * 1024;
const scratch = Buffer.allocUnsafeSlow(SCRATCH_LIMIT);

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
