import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defaultFingerprint, defaultScope } from './fingerprint.js';
import type { IdempotencyRequest } from './request.js';

interface Parts {
  method: string;
  url: string;
  contentType: string | undefined;
  body: Uint8Array;
  other?: string;
}

const request = ({ method, url, contentType, body, other }: Parts): IdempotencyRequest => ({
  method,
  url,
  header: (name) => (name === 'content-type' ? contentType : name === 'x-other' ? other : undefined),
  body,
  raw: null,
});

const printable = fc.string({ unit: fc.constantFrom(...'abc/?=&;:. -+0123456789'), maxLength: 20 });
const parts = fc.record({
  method: fc.constantFrom('POST', 'PATCH', 'PUT'),
  url: printable.map((s) => `/${s}`),
  contentType: fc.option(printable, { nil: undefined }),
  body: fc.uint8Array({ maxLength: 64 }),
});

describe('defaultFingerprint', () => {
  it('F1: is a deterministic SHA-256 hex digest (2,000 requests)', () => {
    fc.assert(
      fc.property(parts, (p) => {
        const fingerprint = defaultFingerprint(request(p));
        expect(fingerprint).toMatch(/^[0-9a-f]{64}$/);
        expect(defaultFingerprint(request({ ...p, body: Uint8Array.from(p.body) }))).toBe(fingerprint);
      }),
      { numRuns: 2_000 },
    );
  });

  it('F1: differs when the method, URL, Content-Type or body differs (2,000 pairs)', () => {
    fc.assert(
      fc.property(parts, parts, (a, b) => {
        const same =
          a.method === b.method &&
          a.url === b.url &&
          (a.contentType ?? '') === (b.contentType ?? '') &&
          Buffer.from(a.body).equals(Buffer.from(b.body));
        expect(defaultFingerprint(request(a)) === defaultFingerprint(request(b))).toBe(same);
      }),
      { numRuns: 2_000 },
    );
  });

  it('F1: bytes shifted from one field to the next do not collide', () => {
    const a = request({ method: 'POST', url: '/a', contentType: 'bc', body: new Uint8Array() });
    const b = request({ method: 'POST', url: '/ab', contentType: 'c', body: new Uint8Array() });
    const c = request({ method: 'POST', url: '/ab', contentType: '', body: new TextEncoder().encode('c') });
    expect(new Set([a, b, c].map(defaultFingerprint)).size).toBe(3);
  });

  it('F1: is exactly SHA-256(method NUL url NUL content-type NUL body), small bodies and large', () => {
    // Pinned: records written by one version must still match requests fingerprinted by the next.
    for (const size of [0, 300, 16 * 1024, 16 * 1024 + 1, 200_000]) {
      const body = new Uint8Array(size).map((_, i) => (i * 31) % 256);
      const p = { method: 'PATCH', url: '/pay/é?x=1', contentType: 'application/json', body };
      const expected = createHash('sha256')
        .update(Buffer.concat([Buffer.from('PATCH\0/pay/é?x=1\0application/json\0'), body]))
        .digest('hex');
      expect(defaultFingerprint(request(p)), `${size} bytes`).toBe(expected);
    }
  });

  it('F1: long heads, and inputs of every size in turn, hash as SHA-256 of the whole input', () => {
    // The small-input path reuses one buffer: a short input after a long one must not see its tail.
    for (const [urlLength, size] of [
      [10, 16_000],
      [10, 3],
      [16_380, 0],
      [16_380, 10],
      [1, 0],
    ] as const) {
      const url = `/${'u'.repeat(urlLength)}`;
      const body = new Uint8Array(size).fill(7);
      const expected = createHash('sha256')
        .update(Buffer.concat([Buffer.from(`POST\0${url}\0text/plain\0`), body]))
        .digest('hex');
      const p = { method: 'POST', url, contentType: 'text/plain', body };
      expect(defaultFingerprint(request(p)), `url ${urlLength}, body ${size}`).toBe(expected);
    }
  });

  it("F1: takes nothing from Buffer's shared pool, whose slabs recorded bodies keep alive", () => {
    const p = { method: 'POST', url: '/orders', contentType: 'application/json', body: new Uint8Array(300) };
    const slices = () => {
      const before = Buffer.from('a');
      defaultFingerprint(request(p));
      return { before, after: Buffer.from('b') };
    };
    let { before, after } = slices();
    // A full pool is replaced by a new one between the two slices at most once in a row.
    if (after.buffer !== before.buffer) ({ before, after } = slices());
    // Consecutive one-byte pool slices sit 8 bytes apart (the pool aligns to 8) unless
    // something in between took its own slice.
    expect(after.buffer).toBe(before.buffer);
    expect(after.byteOffset - before.byteOffset).toBe(8);
  });

  it('F1: ignores other headers', () => {
    const base = { method: 'POST', url: '/x', contentType: 'application/json', body: new Uint8Array([1]) };
    expect(defaultFingerprint(request({ ...base, other: 'one' }))).toBe(
      defaultFingerprint(request({ ...base, other: 'two' })),
    );
  });
});

describe('defaultScope', () => {
  it('S1: is a SHA-256 of the Authorization header, empty when absent', () => {
    const withAuth = (value: string | undefined): IdempotencyRequest => ({
      method: 'POST',
      url: '/',
      header: (name) => (name === 'authorization' ? value : undefined),
      body: new Uint8Array(),
      raw: null,
    });
    expect(defaultScope(withAuth(undefined))).toBe(
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
    expect(defaultScope(withAuth('Bearer a'))).not.toBe(defaultScope(withAuth('Bearer b')));
    expect(defaultScope(withAuth('Bearer a'))).not.toContain('Bearer');
  });
});
