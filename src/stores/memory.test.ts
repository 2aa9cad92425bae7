import { afterEach, describe, expect, it, vi } from 'vitest';
import { describeStoreContract } from '../testing.js';
import { MemoryStore } from './memory.js';

describeStoreContract('MemoryStore', () => new MemoryStore());

const response = { status: 201, headers: {}, body: new Uint8Array([1]), bodyOmitted: false };

describe('MemoryStore', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('T2: the sweep timer does not keep the process alive, and close() stops it', async () => {
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const store = new MemoryStore({ sweepIntervalMs: 1_000 });
    expect(timers()).toBe(before);
    await store.close();
    await store.close();
  });

  it('T2: the periodic sweep removes expired records without anyone asking', async () => {
    vi.useFakeTimers();
    const store = new MemoryStore({ sweepIntervalMs: 1_000 });
    for (let i = 0; i < 10; i++) {
      await store.acquire({ scope: 's', key: `k${i}`, fingerprint: 'f', token: `t${i}`, leaseMs: 500 });
    }
    expect(store.size).toBe(10);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(store.size).toBe(0);
    await store.close();
  });

  it('T2: a sweep visits what expired, not what lives', async () => {
    vi.useFakeTimers();
    const store = new MemoryStore();
    for (let i = 0; i < 10_000; i++) {
      await store.acquire({ scope: 's', key: `live${i}`, fingerprint: 'f', token: 't', leaseMs: 60_000 });
    }
    for (let i = 0; i < 3; i++) {
      await store.acquire({ scope: 's', key: `dead${i}`, fingerprint: 'f', token: 't', leaseMs: 10 });
    }
    vi.advanceTimersByTime(20);
    const get = vi.spyOn(Map.prototype, 'get');
    expect(await store.sweep()).toBe(3);
    // One map look-up per expired entry: the 10,000 live records are never touched.
    expect(get.mock.calls.length).toBe(3);
    get.mockRestore();
    expect(store.size).toBe(10_000);
    await store.close();
  });

  it('T2: a record renewed or completed after it was acquired is swept at its new expiry, not before', async () => {
    vi.useFakeTimers();
    const store = new MemoryStore();
    await store.acquire({ scope: 's', key: 'renewed', fingerprint: 'f', token: 't1', leaseMs: 100 });
    await store.acquire({ scope: 's', key: 'completed', fingerprint: 'f', token: 't2', leaseMs: 100 });
    vi.advanceTimersByTime(50);
    expect(await store.renew('s', 'renewed', 't1', 1_000)).toBe(true);
    expect(await store.complete('s', 'completed', 't2', response, 2_000)).toBe(true);
    vi.advanceTimersByTime(100); // past both first leases
    expect(await store.sweep()).toBe(0);
    vi.advanceTimersByTime(1_000); // past the renewed lease
    expect(await store.sweep()).toBe(1);
    expect(await store.get('s', 'completed')).toMatchObject({ state: 'completed' });
    vi.advanceTimersByTime(1_000); // past the completed record's TTL
    expect(await store.sweep()).toBe(1);
    expect(store.size).toBe(0);
    await store.close();
  });

  it('maxRecords drops the oldest completed record first and never an in-flight one', async () => {
    const store = new MemoryStore({ maxRecords: 2 });
    await store.acquire({ scope: 's', key: 'a', fingerprint: 'f', token: 'ta', leaseMs: 60_000 });
    await store.acquire({ scope: 's', key: 'b', fingerprint: 'f', token: 'tb', leaseMs: 60_000 });
    await store.complete('s', 'b', 'tb', response, 60_000);
    await store.acquire({ scope: 's', key: 'c', fingerprint: 'f', token: 'tc', leaseMs: 60_000 });
    expect(await store.get('s', 'a')).toMatchObject({ state: 'in-flight' });
    expect(await store.get('s', 'b')).toBeUndefined();
    await expect(
      store.acquire({ scope: 's', key: 'd', fingerprint: 'f', token: 'td', leaseMs: 60_000 }),
    ).rejects.toThrow(/MemoryStore is full/);
    await store.close();
  });

  it('rejects bad options with a message naming them', () => {
    expect(() => new MemoryStore({ maxRecords: 0 })).toThrow(/options\.maxRecords/);
    expect(() => new MemoryStore({ sweepIntervalMs: -1 })).toThrow(/options\.sweepIntervalMs/);
  });
});
