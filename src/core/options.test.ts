import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../stores/memory.js';
import {
  DEFAULT_LOCK_TIMEOUT_MS,
  DEFAULT_TTL_MS,
  type IdempotencyOptions,
  resolveOptions,
} from './options.js';

describe('resolveOptions', () => {
  it('applies the SPEC defaults', () => {
    const resolved = resolveOptions();
    expect([...resolved.methods]).toEqual(['POST', 'PATCH']);
    expect(resolved.ttlMs).toBe(DEFAULT_TTL_MS);
    expect(resolved.ttlMs).toBe(86_400_000);
    expect(resolved.lockTimeoutMs).toBe(DEFAULT_LOCK_TIMEOUT_MS);
    expect(resolved.lockTimeoutMs).toBe(60_000);
    expect(resolved.maxRequestBytes).toBe(1_048_576);
    expect(resolved.maxResponseBytes).toBe(1_048_576);
    expect(resolved).toMatchObject({
      required: false,
      onSafeMethodKey: 'ignore',
      record: 'all',
      onInFlight: 'reject',
      onStoreError: 'fail-closed',
    });
    expect(resolved.store).toBeInstanceOf(MemoryStore);
  });

  it('M1: upper-cases methods', () => {
    expect([...resolveOptions({ methods: ['post', 'put'] }).methods]).toEqual(['POST', 'PUT']);
  });

  it.each<[string, IdempotencyOptions, RegExp]>([
    ['ttlMs zero', { ttlMs: 0 }, /options\.ttlMs must be a positive integer/],
    ['ttlMs fractional', { ttlMs: 1.5 }, /options\.ttlMs/],
    ['lockTimeoutMs negative', { lockTimeoutMs: -1 }, /options\.lockTimeoutMs/],
    ['maxRequestBytes NaN', { maxRequestBytes: Number.NaN }, /options\.maxRequestBytes/],
    ['maxResponseBytes string', { maxResponseBytes: '10' as unknown as number }, /options\.maxResponseBytes/],
    ['waitTimeoutMs Infinity', { waitTimeoutMs: Number.POSITIVE_INFINITY }, /options\.waitTimeoutMs/],
    ['storeTimeoutMs zero', { storeTimeoutMs: 0 }, /options\.storeTimeoutMs/],
    ['methods empty', { methods: [] }, /options\.methods must be a non-empty array/],
    ['methods with a space', { methods: ['PO ST'] }, /options\.methods contains "PO ST"/],
    [
      'required not boolean',
      { required: 'yes' as unknown as boolean },
      /options\.required must be true or false/,
    ],
    [
      'onSafeMethodKey unknown',
      { onSafeMethodKey: 'drop' as 'ignore' },
      /options\.onSafeMethodKey must be one of 'ignore', 'reject'/,
    ],
    ['record unknown', { record: '3xx' as 'all' }, /options\.record must be one of/],
    ['onInFlight unknown', { onInFlight: 'queue' as 'wait' }, /options\.onInFlight must be one of/],
    ['onStoreError unknown', { onStoreError: 'open' as 'fail-open' }, /options\.onStoreError must be one of/],
    [
      'fingerprint not a function',
      { fingerprint: 'sha' as unknown as () => string },
      /options\.fingerprint must be a function/,
    ],
    ['scope not a function', { scope: {} as unknown as () => string }, /options\.scope must be a function/],
    [
      'onEvent not a function',
      { onEvent: 1 as unknown as () => void },
      /options\.onEvent must be a function/,
    ],
    [
      'store missing methods',
      { store: {} as never },
      /options\.store must implement the store contract: acquire\(\) is missing/,
    ],
    ['a misspelt option', { ttl: 5 } as IdempotencyOptions, /options\.ttl is not an oncely option/],
  ])('rejects %s with an error naming the option', (_, options, message) => {
    expect(() => resolveOptions(options)).toThrow(message);
  });
});
