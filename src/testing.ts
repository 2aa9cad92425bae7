/**
 * @module oncely/testing: the store contract suite, for oncely's stores and yours.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AcquireInput, Store, StoredResponse } from './core/store.js';

/** Options of {@link describeStoreContract}. */
export interface StoreContractOptions {
  /** Called once after the suite, after the store is closed (drop a schema, flush a prefix). */
  cleanup?: () => void | Promise<void>;
  /** Upper bound for waits on real expiry (leases and TTLs of tens of ms), in ms. @default 5_000 */
  expiryDeadlineMs?: number;
}

/**
 * Register the store contract suite with Vitest: exactly one winner among concurrent acquires,
 * fencing, lease take-over after expiry, TTL expiry, sweep, binary bodies, close twice. Expiry tests
 * use real leases and TTLs of tens of milliseconds and poll the store until they take effect.
 *
 * @param name shown in the test report
 * @param makeStore creates the store under test (called once for the suite)
 * @example
 * import { describeStoreContract } from 'oncely/testing';
 * describeStoreContract('MyStore', () => new MyStore({ client }));
 */
export function describeStoreContract(
  name: string,
  makeStore: () => Store | Promise<Store>,
  options: StoreContractOptions = {},
): void {
  const deadlineMs = options.expiryDeadlineMs ?? 5_000;

  describe(`store contract: ${name}`, () => {
    let store: Store;
    const scope = `scope-${randomUUID()}`;
    const newKey = () => `key-${randomUUID()}`;
    const input = (key: string, extra: Partial<AcquireInput> = {}): AcquireInput => ({
      scope,
      key,
      fingerprint: 'fp-1',
      token: randomUUID(),
      leaseMs: 60_000,
      ...extra,
    });
    const response = (body: Uint8Array = new TextEncoder().encode('{"ok":true}')): StoredResponse => ({
      status: 201,
      headers: {
        'content-type': 'application/json',
        location: '/payments/1',
        link: ['<a>; rel=a', '<b>; rel=b'],
      },
      body,
      bodyOmitted: false,
    });
    /** Polls `check` until it holds; real expiry cannot be awaited any other way. */
    const eventually = async (check: () => Promise<boolean>, what: string) => {
      const deadline = Date.now() + deadlineMs;
      while (!(await check())) {
        if (Date.now() > deadline) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    };

    beforeAll(async () => {
      store = await makeStore();
    });
    afterAll(async () => {
      await store?.close();
      await options.cleanup?.();
    });

    it('L1: the first acquire wins and the record is in flight with its fingerprint', async () => {
      const key = newKey();
      expect(await store.acquire(input(key))).toEqual({ state: 'acquired' });
      expect(await store.acquire(input(key, { fingerprint: 'fp-2' }))).toEqual({
        state: 'in-flight',
        fingerprint: 'fp-1',
      });
      const view = await store.get(scope, key);
      expect(view).toMatchObject({ scope, key, state: 'in-flight', fingerprint: 'fp-1' });
      expect(view!.expiresAt).toBeGreaterThan(Date.now() + 30_000);
    });

    it('L5: exactly one of 50 concurrent acquires wins', async () => {
      const key = newKey();
      const results = await Promise.all(Array.from({ length: 50 }, () => store.acquire(input(key))));
      expect(results.filter((r) => r.state === 'acquired')).toHaveLength(1);
      expect(results.filter((r) => r.state === 'in-flight')).toHaveLength(49);
    });

    it('S1: the same key in two scopes is two records', async () => {
      const key = newKey();
      expect((await store.acquire(input(key))).state).toBe('acquired');
      expect((await store.acquire(input(key, { scope: `${scope}-other` }))).state).toBe('acquired');
    });

    it('K5: keys differing only in case are two records', async () => {
      const key = `Ab-${randomUUID()}`;
      expect((await store.acquire(input(key))).state).toBe('acquired');
      expect((await store.acquire(input(key.toLowerCase()))).state).toBe('acquired');
      expect((await store.acquire(input(key.toUpperCase()))).state).toBe('acquired');
    });

    it('R2: complete stores the response and later acquires return it', async () => {
      const key = newKey();
      const first = input(key);
      await store.acquire(first);
      expect(await store.complete(scope, key, first.token, response(), 60_000)).toBe(true);
      const again = await store.acquire(input(key));
      expect(again).toEqual({ state: 'completed', fingerprint: 'fp-1', response: response() });
      const view = await store.get(scope, key);
      expect(view).toMatchObject({ state: 'completed', fingerprint: 'fp-1', response: response() });
      expect(view!.expiresAt).toBeGreaterThan(Date.now() + 30_000);
    });

    it('R5: bodies are binary-safe: every byte value, and empty', async () => {
      const every = new Uint8Array(512).map((_, i) => i % 256);
      for (const body of [every, new Uint8Array(0)]) {
        const key = newKey();
        const first = input(key);
        await store.acquire(first);
        await store.complete(
          scope,
          key,
          first.token,
          { ...response(body), bodyOmitted: body.length === 0 },
          60_000,
        );
        const again = await store.acquire(input(key));
        expect(again.state).toBe('completed');
        if (again.state !== 'completed') return;
        expect(Buffer.from(again.response.body).equals(Buffer.from(body))).toBe(true);
        expect(again.response.bodyOmitted).toBe(body.length === 0);
        expect(again.response.headers.link).toEqual(['<a>; rel=a', '<b>; rel=b']);
      }
    });

    it('L4: complete, renew and release with a stale token fail and change nothing', async () => {
      const key = newKey();
      const first = input(key);
      await store.acquire(first);
      const stale = randomUUID();
      expect(await store.complete(scope, key, stale, response(), 60_000)).toBe(false);
      expect(await store.renew(scope, key, stale, 60_000)).toBe(false);
      expect(await store.release(scope, key, stale)).toBe(false);
      expect(await store.get(scope, key)).toMatchObject({ state: 'in-flight' });
      expect(await store.complete(scope, key, first.token, response(), 60_000)).toBe(true);
      // Once completed, the old token owns nothing either.
      expect(await store.complete(scope, key, first.token, response(), 60_000)).toBe(false);
      expect(await store.release(scope, key, first.token)).toBe(false);
      expect(await store.renew(scope, key, first.token, 60_000)).toBe(false);
      expect(await store.get(scope, key)).toMatchObject({ state: 'completed' });
    });

    it('L4: operations on a key that has no record fail', async () => {
      const key = newKey();
      expect(await store.complete(scope, key, randomUUID(), response(), 60_000)).toBe(false);
      expect(await store.renew(scope, key, randomUUID(), 60_000)).toBe(false);
      expect(await store.release(scope, key, randomUUID())).toBe(false);
      expect(await store.get(scope, key)).toBeUndefined();
    });

    it('G2: release frees the key for a new first request', async () => {
      const key = newKey();
      const first = input(key);
      await store.acquire(first);
      expect(await store.release(scope, key, first.token)).toBe(true);
      expect(await store.get(scope, key)).toBeUndefined();
      expect((await store.acquire(input(key, { fingerprint: 'fp-2' }))).state).toBe('acquired');
    });

    it('L3: renew extends a lease so it is not taken over', async () => {
      const key = newKey();
      const first = input(key, { leaseMs: 200 });
      await store.acquire(first);
      expect(await store.renew(scope, key, first.token, 60_000)).toBe(true);
      expect((await store.get(scope, key))!.expiresAt).toBeGreaterThan(Date.now() + 30_000);
      expect((await store.acquire(input(key))).state).toBe('in-flight');
    });

    it('L3, L4: a lease that ran out is taken over and the old owner is fenced off', async () => {
      const key = newKey();
      const first = input(key, { leaseMs: 50 });
      await store.acquire(first);
      const second = input(key, { fingerprint: 'fp-2' });
      await eventually(
        async () => (await store.acquire(second)).state === 'acquired',
        'the lease to run out',
      );
      expect(await store.complete(scope, key, first.token, response(), 60_000)).toBe(false);
      expect(await store.renew(scope, key, first.token, 60_000)).toBe(false);
      expect(await store.complete(scope, key, second.token, response(), 60_000)).toBe(true);
      expect(await store.get(scope, key)).toMatchObject({ state: 'completed', fingerprint: 'fp-2' });
    });

    it('L4: an expired lease cannot be completed even before anyone takes it over', async () => {
      const key = newKey();
      const first = input(key, { leaseMs: 30 });
      await store.acquire(first);
      await eventually(async () => (await store.get(scope, key)) === undefined, 'the lease to run out');
      expect(await store.complete(scope, key, first.token, response(), 60_000)).toBe(false);
    });

    it('T1: a completed record expires after its TTL and the key is new again', async () => {
      const key = newKey();
      const first = input(key);
      await store.acquire(first);
      await store.complete(scope, key, first.token, response(), 50);
      await eventually(async () => (await store.get(scope, key)) === undefined, 'the record to expire');
      expect((await store.acquire(input(key))).state).toBe('acquired');
    });

    it('T2: sweep removes expired records, at most `limit` per call, and never live ones', async () => {
      const live = input(newKey());
      await store.acquire(live);
      await store.complete(scope, live.key, live.token, response(), 60_000);
      const livingLease = input(newKey());
      await store.acquire(livingLease);
      const expired: string[] = [];
      for (let i = 0; i < 5; i++) {
        const record = input(newKey());
        await store.acquire(record);
        await store.complete(scope, record.key, record.token, response(), 20);
        expired.push(record.key);
      }
      const lapsed = input(newKey(), { leaseMs: 20 });
      await store.acquire(lapsed);
      expired.push(lapsed.key);
      // Wait until every record has expired (a get() may remove it lazily, so poll the clock via the last one).
      const lastExpiry = Date.now() + 20;
      await eventually(async () => Date.now() > lastExpiry + 5, 'the records to expire');
      expect(await store.sweep(2)).toBeLessThanOrEqual(2);
      for (let round = 0; round < 100; round++) {
        if ((await store.sweep(1000)) === 0) break;
      }
      for (const key of expired) expect(await store.get(scope, key)).toBeUndefined();
      expect(await store.get(scope, live.key)).toMatchObject({ state: 'completed' });
      expect(await store.get(scope, livingLease.key)).toMatchObject({ state: 'in-flight' });
    });

    it('R7: a record completed without its body says so', async () => {
      const key = newKey();
      const first = input(key);
      await store.acquire(first);
      await store.complete(
        scope,
        key,
        first.token,
        { ...response(new Uint8Array(0)), bodyOmitted: true },
        60_000,
      );
      const again = await store.acquire(input(key));
      expect(again.state === 'completed' && again.response.bodyOmitted).toBe(true);
    });

    it('closes twice without throwing', async () => {
      const other = await makeStore();
      await other.close();
      await expect(other.close()).resolves.toBeUndefined();
    });
  });
}
