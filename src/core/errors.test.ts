import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { problemResponse } from './engine.js';
import {
  type IdempotencyError,
  InvalidKeyError,
  KeyInUseError,
  KeyNotAllowedError,
  KeyReusedError,
  MissingKeyError,
  RequestTooLargeError,
  ResponseIncompleteError,
  StoreUnavailableError,
  UpstreamFailedError,
  UpstreamTimeoutError,
  UpstreamUnreachableError,
} from './errors.js';

// P1: the SPEC table, row by row.
const TABLE: Array<[IdempotencyError, number, string, string | undefined]> = [
  [new InvalidKeyError('bad'), 400, 'idempotency_key_invalid', undefined],
  [new MissingKeyError('POST'), 400, 'idempotency_key_missing', undefined],
  [new KeyNotAllowedError('GET'), 400, 'idempotency_key_not_allowed', undefined],
  [new KeyInUseError(), 409, 'idempotency_key_in_use', '1'],
  [new RequestTooLargeError(10), 413, 'request_too_large', undefined],
  [new KeyReusedError(), 422, 'idempotency_key_reused', undefined],
  [new StoreUnavailableError(new Error('down')), 503, 'idempotency_store_unavailable', '1'],
  // R3 and G2: the outcomes oncely records in place of a response that could not be had.
  [new ResponseIncompleteError(), 500, 'response_incomplete', undefined],
  [new UpstreamUnreachableError(), 502, 'upstream_unreachable', '1'],
  [new UpstreamFailedError(), 502, 'upstream_failed', undefined],
  [new UpstreamTimeoutError(30_000), 504, 'upstream_timeout', undefined],
];

describe('IdempotencyError', () => {
  it.each(
    TABLE.map(([error, status, code, retryAfter]) => ({ name: error.name, error, status, code, retryAfter })),
  )('P1: $name renders $status $code as an RFC 9457 problem', ({ error, status, code, retryAfter }) => {
    expect(error.status).toBe(status);
    expect(error.code).toBe(code);
    const response = problemResponse(error);
    expect(response.status).toBe(status);
    expect(response.headers['content-type']).toBe('application/problem+json');
    expect(response.headers['cache-control']).toBe('no-store');
    expect(response.headers['retry-after']).toBe(retryAfter);
    const body = JSON.parse(new TextDecoder().decode(response.body));
    expect(body).toEqual({
      type: expect.stringContaining(code.replaceAll('_', '-')),
      title: error.title,
      status,
      detail: error.message,
      code,
    });
  });

  it('P1: the README status/code table lists every problem oncely sends', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    for (const [, status, code] of TABLE)
      expect(readme).toMatch(new RegExp(`\\|\\s*${status}\\s*\\|\\s*\`${code}\``));
  });

  it('keeps the cause', () => {
    const cause = new Error('ECONNREFUSED');
    expect(new StoreUnavailableError(cause).cause).toBe(cause);
  });
});
