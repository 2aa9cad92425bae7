import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway } from '../../src/gateway/server.js';
import { openStore, StoreOpenError } from '../../src/gateway/stores.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from '../support/services.js';
import { LogLines, send, Upstream } from './helpers.js';

/** A keyed POST twice through a gateway on `storeUrl`: one upstream call, one replay (G1). */
async function replayThrough(storeUrl: string): Promise<void> {
  const upstream = new Upstream();
  const gateway = await startGateway(
    { upstream: await upstream.listen(), store: storeUrl, ttlMs: 60_000 },
    { logDestination: new LogLines() },
  );
  try {
    const request = {
      method: 'POST',
      path: '/payments',
      headers: { 'idempotency-key': `k_${randomUUID()}` },
      body: 'x',
    };
    const first = await send(gateway.url, request);
    const second = await send(gateway.url, request);
    expect(first.status).toBe(201);
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(upstream.count('POST /payments')).toBe(1);
  } finally {
    await gateway.close();
    await upstream.close();
  }
}

describe('gateway store URLs', () => {
  it('G1: memory: and sqlite: URLs open working stores', async () => {
    await replayThrough('memory:');
    await replayThrough('sqlite::memory:');
  });

  it('S2: a store that cannot be opened fails with one line naming it', async () => {
    await expect(openStore('sqlite:/nonexistent-dir/oncely.db')).rejects.toThrow(StoreOpenError);
    await expect(openStore('sqlite:/nonexistent-dir/oncely.db')).rejects.toThrow(
      /^store sqlite:\/nonexistent-dir/,
    );
  });
});

describe('gateway store URLs: redis://', async () => {
  const available = await serviceAvailable('redis');
  const prefix = `oncely-gw-test-${randomUUID().slice(0, 8)}:`;
  afterAll(async () => {
    if (!available) return;
    const client = new Redis(REDIS_URL);
    const keys = await client.keys(`${prefix}*`);
    if (keys.length > 0) await client.del(...keys);
    await client.quit();
  });

  it.skipIf(!available)('G1: redis://…?prefix= opens a RedisStore the gateway records in', async () => {
    await replayThrough(`${REDIS_URL}?prefix=${encodeURIComponent(prefix)}`);
    const client = new Redis(REDIS_URL);
    expect((await client.keys(`${prefix}*`)).length).toBeGreaterThan(0);
    await client.quit();
  });

  it.skipIf(!available)('S2: an unreachable Redis fails at startup with one line', async () => {
    await expect(openStore('redis://127.0.0.1:1')).rejects.toThrow(
      /^store redis:\/\/127\.0\.0\.1:1 is unreachable: .+/,
    );
  });
});

describe('gateway store URLs: postgres://', async () => {
  const available = await serviceAvailable('postgres');
  const schema = `oncely_gw_${randomUUID().slice(0, 8)}`;
  beforeAll(async () => {
    if (!available) return;
    const client = new pg.Client({ connectionString: POSTGRES_URL });
    await client.connect();
    await client.query(`CREATE SCHEMA ${schema}`);
    await client.end();
  });
  afterAll(async () => {
    if (!available) return;
    const client = new pg.Client({ connectionString: POSTGRES_URL });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await client.end();
  });

  it.skipIf(!available)(
    'G1: postgres://…?schema= migrates and opens a PostgresStore the gateway records in',
    async () => {
      await replayThrough(`${POSTGRES_URL}?schema=${schema}`);
      const client = new pg.Client({ connectionString: POSTGRES_URL });
      await client.connect();
      const { rows } = await client.query(`SELECT count(*)::int AS n FROM ${schema}.oncely_records_v1`);
      await client.end();
      expect(rows[0].n).toBe(1);
    },
  );

  it.skipIf(!available)('S2: an unreachable PostgreSQL fails at startup with one line', async () => {
    await expect(openStore('postgres://postgres@127.0.0.1:1/test')).rejects.toThrow(
      /^store postgres:.+ is unreachable: .+/,
    );
  });
});
