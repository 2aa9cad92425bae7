import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidKeyError } from './errors.js';
import { parseKey, redactKey } from './key.js';

const KEY_CHAR = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_');
const validKey = fc.string({ unit: KEY_CHAR, minLength: 8, maxLength: 255 });
const whitespace = fc.string({ unit: fc.constantFrom(' ', '\t'), maxLength: 3 });

describe('parseKey', () => {
  it('K2, K3: every valid key is accepted bare, quoted and padded with whitespace (5,000 keys)', () => {
    fc.assert(
      fc.property(validKey, whitespace, whitespace, (key, before, after) => {
        expect(parseKey(key)).toBe(key);
        expect(parseKey(`"${key}"`)).toBe(key);
        expect(parseKey(`${before}${key}${after}`)).toBe(key);
        expect(parseKey(`${before}"${key}"${after}`)).toBe(key);
      }),
      { numRuns: 5_000 },
    );
  });

  it('K3: any input either yields a valid key or a 400 idempotency_key_invalid, never throws (10,000 inputs)', () => {
    const anyInput = fc.oneof(
      fc.string(),
      fc.string({ unit: 'grapheme' }),
      fc.string({ unit: 'binary' }),
      validKey,
    );
    fc.assert(
      fc.property(anyInput, (input) => {
        const result = parseKey(input);
        if (typeof result === 'string') {
          expect(result).toMatch(/^[A-Za-z0-9_-]{8,255}$/);
        } else {
          expect(result).toBeInstanceOf(InvalidKeyError);
          expect(result.status).toBe(400);
          expect(result.code).toBe('idempotency_key_invalid');
        }
      }),
      { numRuns: 10_000 },
    );
  });

  it.each([
    ['7 characters', 'abcdefg'],
    ['256 characters', 'a'.repeat(256)],
    ['empty', ''],
    ['only whitespace', '   '],
    ['a dot', 'abcd.efgh'],
    ['a slash', 'abcd/efgh'],
    ['non-ASCII', 'abcdefgé'],
    ['an escaped quote', '"abcd\\"efgh"'],
    ['a lone quote', '"'],
    ['an unterminated string', '"abcdefgh'],
    ['a quoted short key', '"abcdefg"'],
  ])('K3: rejects %s', (_, input) => {
    expect(parseKey(input)).toBeInstanceOf(InvalidKeyError);
  });

  it('K3: accepts exactly 8 and 255 characters', () => {
    expect(parseKey('abcdefgh')).toBe('abcdefgh');
    expect(parseKey('a'.repeat(255))).toBe('a'.repeat(255));
  });

  it('K4: several field lines, or a comma-joined value, are rejected', () => {
    expect(parseKey(['abcdefgh', 'abcdefgi'])).toBeInstanceOf(InvalidKeyError);
    expect(parseKey('abcdefgh, abcdefgi')).toBeInstanceOf(InvalidKeyError);
    expect((parseKey('abcdefgh,abcdefgi') as InvalidKeyError).message).toMatch(/exactly one/);
    expect(parseKey(['abcdefgh'])).toBe('abcdefgh');
  });

  it('K5: keeps case', () => {
    expect(parseKey('AbCdEfGh')).toBe('AbCdEfGh');
  });
});

describe('redactKey', () => {
  it('S3: keeps only the first 8 characters', () => {
    fc.assert(
      fc.property(validKey, (key) => {
        const shown = redactKey(key);
        expect(shown.startsWith(key.slice(0, 8))).toBe(true);
        expect(shown.replace('…', '').length).toBeLessThanOrEqual(8);
      }),
    );
  });
});
