import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { createClient } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REDIS_URL, serviceAvailable } from '../../test/support/services.js';
import type { StoredResponse } from '../core/store.js';
import { describeStoreContract } from '../testing.js';
import { type IoredisClientLike, RedisStore } from './redis.js';

const available = await serviceAvailable('redis');

type NodeRedis = ReturnType<typeof createClient>;

/** SCAN + DEL every key under `prefix`, so a test run leaves nothing behind. */
async function deleteByPrefix(io: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await io.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    if (keys.length > 0) await io.del(...keys);
    cursor = next;
  } while (cursor !== '0');
}

async function keysByPrefix(io: Redis, prefix: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await io.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    found.push(...keys);
    cursor = next;
  } while (cursor !== '0');
  return found;
}

const testPrefix = () => `oncely-test:${randomUUID()}:`;

const response = (body: Uint8Array, headers: StoredResponse['headers'] = {}): StoredResponse => ({
  status: 200,
  headers: { 'content-type': 'application/octet-stream', ...headers },
  body,
  bodyOmitted: false,
});

describe.skipIf(!available)('RedisStore', () => {
  let io: Redis;
  let nr: NodeRedis;
  const prefixes: string[] = [];
  const prefix = () => {
    const p = testPrefix();
    prefixes.push(p);
    return p;
  };

  beforeAll(async () => {
    io = new Redis(REDIS_URL);
    nr = createClient({ url: REDIS_URL });
    await nr.connect();
  });
  afterAll(async () => {
    for (const p of prefixes) await deleteByPrefix(io, p);
    await io?.quit();
    await nr?.quit();
  });

  const ioPrefix = prefix();
  describeStoreContract('RedisStore (ioredis)', () => new RedisStore({ client: io, prefix: ioPrefix }), {
    cleanup: () => deleteByPrefix(io, ioPrefix),
  });
  const nrPrefix = prefix();
  describeStoreContract('RedisStore (node-redis)', () => new RedisStore({ client: nr, prefix: nrPrefix }), {
    cleanup: () => deleteByPrefix(io, nrPrefix),
  });

  const clients = () =>
    [
      ['ioredis', io],
      ['node-redis', nr],
    ] as const;

  it('L5: a script cache flush (NOSCRIPT) falls back to EVAL and every operation still works', async () => {
    for (const [name, client] of clients()) {
      const store = new RedisStore({ client, prefix: prefix() });
      const key = `key-${name}-${randomUUID()}`;
      await io.script('FLUSH');
      expect(
        await store.acquire({ scope: 's', key, fingerprint: 'fp', token: 't1', leaseMs: 60_000 }),
      ).toEqual({
        state: 'acquired',
      });
      await io.script('FLUSH');
      expect(await store.renew('s', key, 't1', 60_000)).toBe(true);
      await io.script('FLUSH');
      expect(await store.complete('s', key, 't1', response(new Uint8Array([1])), 60_000)).toBe(true);
      await io.script('FLUSH');
      expect(await store.get('s', key)).toMatchObject({ state: 'completed', fingerprint: 'fp' });
      const other = `other-${randomUUID()}`;
      await store.acquire({ scope: 's', key: other, fingerprint: 'fp', token: 't2', leaseMs: 60_000 });
      await io.script('FLUSH');
      expect(await store.release('s', other, 't2')).toBe(true);
    }
  });

  it('R5: a body that is not UTF-8, 1 MiB long, round-trips byte for byte with non-ASCII headers', async () => {
    const body = new Uint8Array(1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7919) % 256;
    body.set([0xff, 0xfe, 0xc3, 0x28, 0x00, 0x80], 0); // invalid UTF-8 first
    const headers = { 'content-disposition': 'attachment; filename="ä€.bin"', 'x-multi': ['a', 'b'] };
    for (const [name, client] of clients()) {
      const store = new RedisStore({ client, prefix: prefix() });
      const key = `key-${name}`;
      await store.acquire({ scope: 's', key, fingerprint: 'fp', token: 't', leaseMs: 60_000 });
      // A view into a larger buffer: only the viewed bytes may be stored.
      const padded = new Uint8Array(body.length + 8);
      padded.set(body, 4);
      await store.complete('s', key, 't', response(padded.subarray(4, 4 + body.length), headers), 60_000);
      const again = await store.acquire({ scope: 's', key, fingerprint: 'fp', token: 'u', leaseMs: 60_000 });
      expect(again.state).toBe('completed');
      if (again.state !== 'completed') return;
      expect(again.response.body).toBeInstanceOf(Uint8Array);
      expect(Buffer.compare(Buffer.from(again.response.body), Buffer.from(body))).toBe(0);
      expect(again.response.headers).toEqual({ 'content-type': 'application/octet-stream', ...headers });
      expect(again.response.status).toBe(200);
    }
  });

  it('F2: a fingerprint with colons and non-ASCII text round-trips in flight and once completed', async () => {
    const store = new RedisStore({ client: nr, prefix: prefix() });
    const fingerprint = '12:ab:ä€:\n{}';
    await store.acquire({ scope: 's', key: 'k', fingerprint, token: 't', leaseMs: 60_000 });
    expect(
      await store.acquire({ scope: 's', key: 'k', fingerprint: 'x', token: 'u', leaseMs: 60_000 }),
    ).toEqual({
      state: 'in-flight',
      fingerprint,
    });
    await store.complete('s', 'k', 't', response(new TextEncoder().encode('7:body:')), 60_000);
    const view = await store.get('s', 'k');
    expect(view).toMatchObject({ state: 'completed', fingerprint });
    expect(new TextDecoder().decode(view!.response!.body)).toBe('7:body:');
  });

  it('S1: the Redis key is the prefix plus a hash tag of a digest of scope and key, whatever braces they hold', async () => {
    const p = prefix();
    const store = new RedisStore({ client: io, prefix: p });
    await store.acquire({ scope: '{tenant}', key: 'a}b{c}', fingerprint: 'fp', token: 't', leaseMs: 60_000 });
    await store.acquire({
      scope: '{tenant}',
      key: 'other-key',
      fingerprint: 'fp',
      token: 't',
      leaseMs: 60_000,
    });
    // A separator inside scope or key must not make two (scope, key) pairs one record.
    await store.acquire({ scope: 'a\u0000b', key: 'c', fingerprint: 'fp', token: 't', leaseMs: 60_000 });
    expect(
      (await store.acquire({ scope: 'a', key: 'b\u0000c', fingerprint: 'fp', token: 't', leaseMs: 60_000 }))
        .state,
    ).toBe('acquired');
    const keys = await keysByPrefix(io, p);
    expect(keys).toHaveLength(4);
    const tags = new Set<string>();
    for (const key of keys) {
      // Exactly one `{…}` after the prefix, so Cluster hashes exactly the digest.
      expect(key).toMatch(/^[^{}]*\{[A-Za-z0-9_-]{43}\}$/);
      expect(key.startsWith(p)).toBe(true);
      tags.add(key.slice(key.indexOf('{')));
    }
    expect(tags.size).toBe(4);
    expect(store.redisKey('{tenant}', 'a}b{c}')).toBe(
      keys.find((k) => k === store.redisKey('{tenant}', 'a}b{c}')),
    );
    expect(await store.get('{tenant}', 'a}b{c}')).toMatchObject({ scope: '{tenant}', key: 'a}b{c}' });
  });

  it('T1, T2: every record carries a Redis expiry: the lease in flight, the TTL once completed', async () => {
    const p = prefix();
    const store = new RedisStore({ client: nr, prefix: p });
    await store.acquire({ scope: 's', key: 'k', fingerprint: 'fp', token: 't', leaseMs: 30_000 });
    const redisKey = store.redisKey('s', 'k');
    const lease = await io.pttl(redisKey);
    expect(lease).toBeGreaterThan(0);
    expect(lease).toBeLessThanOrEqual(30_000);
    await store.renew('s', 'k', 't', 90_000);
    const renewed = await io.pttl(redisKey);
    expect(renewed).toBeGreaterThan(30_000);
    expect(renewed).toBeLessThanOrEqual(90_000);
    await store.complete('s', 'k', 't', response(new Uint8Array([1, 2])), 3_600_000);
    const ttl = await io.pttl(redisKey);
    expect(ttl).toBeGreaterThan(90_000);
    expect(ttl).toBeLessThanOrEqual(3_600_000);
    await store.acquire({ scope: 's', key: 'released', fingerprint: 'fp', token: 'r', leaseMs: 30_000 });
    await store.release('s', 'released', 'r');
    // Nothing the store wrote lives forever (PTTL -1 = no expiry).
    const keys = await keysByPrefix(io, p);
    expect(keys).toEqual([redisKey]);
    for (const key of keys) expect(await io.pttl(key)).toBeGreaterThan(0);
  });

  it('T2: sweep has nothing to do because Redis expires records itself', async () => {
    const store = new RedisStore({ client: io, prefix: prefix() });
    await store.acquire({ scope: 's', key: 'k', fingerprint: 'fp', token: 't', leaseMs: 60_000 });
    expect(await store.sweep()).toBe(0);
    expect(await store.get('s', 'k')).toMatchObject({ state: 'in-flight' });
  });

  it('S1: two prefixes are two independent stores', async () => {
    const a = new RedisStore({ client: io, prefix: prefix() });
    const b = new RedisStore({ client: nr, prefix: prefix() });
    const input = { scope: 's', key: 'shared-key', fingerprint: 'fp', token: 't', leaseMs: 60_000 };
    expect((await a.acquire(input)).state).toBe('acquired');
    expect((await b.acquire(input)).state).toBe('acquired');
    await a.complete('s', 'shared-key', 't', response(new Uint8Array([1])), 60_000);
    expect((await b.get('s', 'shared-key'))?.state).toBe('in-flight');
  });

  it('L5: acquire, complete, renew, release and get are one Redis command each', async () => {
    const sent: string[] = [];
    const counting: IoredisClientLike = {
      callBuffer: (command, ...args) => {
        sent.push(command);
        return io.callBuffer(command, ...args);
      },
    };
    const store = new RedisStore({ client: counting, prefix: prefix() });
    await store.acquire({ scope: 's', key: 'k', fingerprint: 'fp', token: 't', leaseMs: 60_000 }); // warms the cache
    sent.length = 0;
    const steps: [string, () => Promise<unknown>][] = [
      [
        'acquire',
        () => store.acquire({ scope: 's', key: 'n', fingerprint: 'fp', token: 'u', leaseMs: 60_000 }),
      ],
      ['renew', () => store.renew('s', 'n', 'u', 60_000)],
      ['complete', () => store.complete('s', 'n', 'u', response(new Uint8Array([1])), 60_000)],
      [
        'replay',
        () => store.acquire({ scope: 's', key: 'n', fingerprint: 'fp', token: 'v', leaseMs: 60_000 }),
      ],
      ['get', () => store.get('s', 'n')],
      ['release', () => store.release('s', 'k', 't')],
    ];
    for (const [name, step] of steps) {
      sent.length = 0;
      await step();
      expect([name, sent]).toEqual([name, ['EVALSHA']]);
    }
  });

  it('S2: a store call that errors rejects instead of answering', async () => {
    const disconnected = createClient({ url: REDIS_URL }); // never connected
    const store = new RedisStore({ client: disconnected, prefix: prefix() });
    await expect(
      store.acquire({ scope: 's', key: 'k', fingerprint: 'fp', token: 't', leaseMs: 60_000 }),
    ).rejects.toThrow();
    // A foreign value where a record would be is an error, never overwritten.
    const guarded = new RedisStore({ client: io, prefix: prefix() });
    await io.rpush(guarded.redisKey('s', 'k'), 'not-a-record');
    await expect(
      guarded.acquire({ scope: 's', key: 'k', fingerprint: 'fp', token: 't', leaseMs: 60_000 }),
    ).rejects.toThrow('not a record');
    expect(await io.lrange(guarded.redisKey('s', 'k'), 0, -1)).toEqual(['not-a-record']);
    const failing: IoredisClientLike = { callBuffer: () => Promise.reject(new Error('READONLY replica')) };
    await expect(new RedisStore({ client: failing }).renew('s', 'k', 't', 1_000)).rejects.toThrow('READONLY');
  });

  it('close() leaves the client open, is safe twice, and later calls reject', async () => {
    const store = new RedisStore({ client: nr, prefix: prefix() });
    await store.close();
    await store.close();
    expect(await nr.ping()).toBe('PONG');
    await expect(store.get('s', 'k')).rejects.toThrow('RedisStore is closed');
  });

  it('validates its options once, naming the option', () => {
    expect(() => new RedisStore(undefined as never)).toThrow('options.client');
    expect(() => new RedisStore({ client: {} as never })).toThrow('options.client');
    expect(() => new RedisStore({ client: io, prefix: 'app:{x}:' })).toThrow('options.prefix');
  });
});
