/**
 * @module Parsing the Idempotency-Key header (SPEC K1–K5).
 */
import { InvalidKeyError } from './errors.js';

/** K1: the request header carrying the key (compare lower-case). */
export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key';

const KEY_PATTERN = /^[A-Za-z0-9_-]{8,255}$/;

/**
 * Parse an `Idempotency-Key` field value into a key, or the 400 problem that rejects it.
 * Accepts a bare token or an RFC 9651 sf-string (K2); keeps case (K5).
 *
 * @param value the field value; an array means several field lines (K4).
 * @example parseKey('"8e03978e-40d5-43e8"') // → '8e03978e-40d5-43e8'
 */
export function parseKey(value: string | readonly string[]): string | InvalidKeyError {
  if (typeof value !== 'string') {
    if (value.length !== 1) return new InvalidKeyError('Send exactly one Idempotency-Key header.');
    value = value[0]!;
  }
  let key = value.trim();
  if (key.charCodeAt(0) === 34 /* " */) {
    // K2: an sf-string. Escapes (\" and \\) could only yield characters K3 forbids, so none are decoded.
    if (key.length < 2 || key.charCodeAt(key.length - 1) !== 34) {
      return new InvalidKeyError('The Idempotency-Key is an unterminated quoted string.');
    }
    key = key.slice(1, -1);
  }
  if (KEY_PATTERN.test(key)) return key;
  if (key.includes(',')) {
    // K4: node and Fetch join repeated field lines with ", ".
    return new InvalidKeyError('Send exactly one Idempotency-Key header with one key.');
  }
  return new InvalidKeyError(
    'An Idempotency-Key must be 8 to 255 characters of A-Z, a-z, 0-9, "-" and "_" (a UUID v4 works well).',
  );
}

/** S3: how a key may appear in logs and events: its first 8 characters only. */
export function redactKey(key: string): string {
  return key.length <= 8 ? key : `${key.slice(0, 8)}…`;
}
