import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
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
    // Map look-ups by a sweep of 3 expired records, next to `live` records that have not expired.
    const lookUps = async (live: number) => {
      const store = new MemoryStore();
      for (let i = 0; i < live; i++) {
        await store.acquire({ scope: 's', key: `live${i}`, fingerprint: 'f', token: 't', leaseMs: 60_000 });
      }
      for (let i = 0; i < 3; i++) {
        await store.acquire({ scope: 's', key: `dead${i}`, fingerprint: 'f', token: 't', leaseMs: 10 });
      }
      vi.advanceTimersByTime(20);
      const get = vi.spyOn(Map.prototype, 'get');
      expect(await store.sweep()).toBe(3);
      const calls = get.mock.calls.length;
      get.mockRestore();
      expect(store.size).toBe(live);
      await store.close();
      return calls;
    };
    const few = await lookUps(10);
    expect(few).toBeGreaterThan(0);
    expect(await lookUps(10_000)).toBe(few);
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

  it('T2: a record whose TTL ends before its lease would have is swept when the TTL ends', async () => {
    vi.useFakeTimers();
    const store = new MemoryStore();
    await store.acquire({ scope: 's', key: 'k', fingerprint: 'f', token: 't', leaseMs: 60_000 });
    expect(await store.complete('s', 'k', 't', response, 1_000)).toBe(true);
    vi.advanceTimersByTime(1_001);
    expect(await store.sweep()).toBe(1);
    expect(store.size).toBe(0);
    vi.advanceTimersByTime(60_000); // the lease's entry, left behind, finds nothing to do
    expect(await store.sweep()).toBe(0);
    await store.close();
  });

  it('S1: the same key in two scopes is two records, and a scope left empty is dropped', async () => {
    const store = new MemoryStore();
    await store.acquire({ scope: 'a', key: 'k', fingerprint: 'fa', token: 'ta', leaseMs: 60_000 });
    await store.acquire({ scope: 'b', key: 'k', fingerprint: 'fb', token: 'tb', leaseMs: 60_000 });
    expect(store.size).toBe(2);
    expect(await store.get('a', 'k')).toMatchObject({ fingerprint: 'fa' });
    expect(await store.release('a', 'k', 'tb')).toBe(false); // b's token does not own a's record
    expect(await store.release('a', 'k', 'ta')).toBe(true);
    expect(await store.get('a', 'k')).toBeUndefined();
    expect(await store.get('b', 'k')).toMatchObject({ fingerprint: 'fb' });
    const set = vi.spyOn(Map.prototype, 'set');
    await store.acquire({ scope: 'a', key: 'k2', fingerprint: 'fa', token: 'ta2', leaseMs: 60_000 });
    // Scope a was emptied and dropped, so it gets a new map: one set for the scope, one for the key.
    expect(set.mock.calls.length).toBe(2);
    set.mockRestore();
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
    expect(() =>
      store.acquire({ scope: 's', key: 'd', fingerprint: 'f', token: 'td', leaseMs: 60_000 }),
    ).toThrow(/MemoryStore is full/);
    await store.close();
  });

  it('maxRecords evicts in the order records completed, skipping ones that expired meanwhile', async () => {
    vi.useFakeTimers();
    const store = new MemoryStore({ maxRecords: 3 });
    const acquire = (key: string) =>
      store.acquire({ scope: 's', key, fingerprint: 'f', token: `t${key}`, leaseMs: 60_000 });
    acquire('a');
    acquire('b');
    acquire('c');
    store.complete('s', 'c', 'tc', response, 60_000);
    store.complete('s', 'a', 'ta', response, 10); // completes second, and expires first
    store.complete('s', 'b', 'tb', response, 60_000);
    vi.advanceTimersByTime(20);
    expect(store.get('s', 'a')).toBeUndefined(); // removed on access
    acquire('d');
    acquire('e'); // full: evicts c, the oldest completion still held (a is gone already)
    expect(store.get('s', 'c')).toBeUndefined();
    expect(store.get('s', 'b')).toMatchObject({ state: 'completed' });
    await store.close();
    vi.useRealTimers();
  });

  it("maxRecords: an evicted record's response is not kept alive by anything the store holds", async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const store = new MemoryStore({ maxRecords: 1 });
    await store.acquire({ scope: 's', key: 'a', fingerprint: 'f', token: 'ta', leaseMs: 60_000 });
    // In a function of its own, so that no variable of this test holds the body.
    const recorded = await (async () => {
      const body = new Uint8Array(64 * 1024);
      await store.complete('s', 'a', 'ta', { status: 201, headers: {}, body, bodyOmitted: false }, 60_000);
      return new WeakRef(body);
    })();
    await store.acquire({ scope: 's', key: 'b', fingerprint: 'f', token: 'tb', leaseMs: 60_000 }); // evicts a
    expect(await store.get('s', 'a')).toBeUndefined();
    // A WeakRef's target stays alive until the job that dereferenced it ends.
    await new Promise((resolve) => setImmediate(resolve));
    gc();
    expect(recorded.deref()).toBeUndefined();
    await store.close();
  });

  it('rejects bad options with a message naming them', () => {
    expect(() => new MemoryStore({ maxRecords: 0 })).toThrow(/options\.maxRecords/);
    expect(() => new MemoryStore({ sweepIntervalMs: -1 })).toThrow(/options\.sweepIntervalMs/);
  });
});
