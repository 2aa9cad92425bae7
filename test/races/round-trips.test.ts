/**
 * The cost floor of each store, counted at the driver over a real HTTP request: a new key is one
 * acquire and one complete (no renewal for a fast handler); a replay, a 409 and a 422 are one acquire
 * each. Redis commands are counted at the client's command method, PostgreSQL statements at
 * `pool.query`, SQLite statements with better-sqlite3's `verbose` trace (SQLite is in-process: its
 * "round trips" are statements, and a claim is one `BEGIN IMMEDIATE` transaction).
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withIdempotency } from '../../src/adapters/node.js';
import type { Store } from '../../src/core/store.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { RedisStore } from '../../src/stores/redis.js';
import { SqliteStore } from '../../src/stores/sqlite.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from '../support/services.js';

const redisUp = await serviceAvailable('redis');
const postgresUp = await serviceAvailable('postgres');

/** A store whose backend calls land in `sent`, one entry per round trip / statement. */
interface Counted {
  store: Store;
  sent: string[];
  cleanup(): Promise<void>;
}

type Case = 'new key' | 'replay' | '409' | '422';
const table = new Map<string, Partial<Record<Case, string>>>();

afterAll(() => {
  if (table.size === 0) return;
  const cases: Case[] = ['new key', 'replay', '409', '422'];
  const lines = [
    `| store | ${cases.join(' | ')} |`,
    `|---|${cases.map(() => '---').join('|')}|`,
    ...[...table].map(([store, row]) => `| ${store} | ${cases.map((c) => row[c] ?? '–').join(' | ')} |`),
  ];
  console.info(`[round trips] store operations / backend calls per request\n${lines.join('\n')}`);
});

/** Wraps every Store method so the engine's calls are listed too. */
function countOperations(store: Store, operations: string[]): Store {
  return new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        operations.push(String(name));
        return value.apply(target, args);
      };
    },
  });
}

function describeRoundTrips(
  name: string,
  available: boolean,
  make: () => Promise<Counted>,
  /** What the backend receives for a new key, and for a replay, a 409 or a 422 (one acquire). */
  expected: { newKey: string[]; acquire: string[] },
): void {
  const newKeyCalls = expected.newKey.length;
  describe.skipIf(!available)(`round trips of ${name}`, () => {
    let counted: Counted;
    let server: Server;
    let base: string;
    const operations: string[] = [];
    let release: (() => void) | undefined;
    let holding: (() => void) | undefined;

    beforeAll(async () => {
      counted = await make();
      const listener = withIdempotency(
        async (req, res) => {
          for await (const _ of req);
          if (req.headers['x-hold'] !== undefined) {
            await new Promise<void>((resolve) => {
              release = resolve;
              holding?.();
            });
          }
          res.statusCode = 201;
          res.end('created');
        },
        { store: countOperations(counted.store, operations) },
      );
      server = createServer(listener);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      // Warm up: scripts loaded (Redis NOSCRIPT fallback), statements prepared, so each case below
      // counts the steady state.
      const key = randomUUID();
      await send(key, 'warm-up');
      await send(key, 'warm-up');
    });

    afterAll(async () => {
      release?.();
      server?.closeAllConnections();
      await new Promise((resolve) => server?.close(resolve));
      await counted?.cleanup();
    });

    async function send(key: string, body: string, hold = false): Promise<Response> {
      const headers: Record<string, string> = { 'idempotency-key': key, 'content-type': 'text/plain' };
      if (hold) headers['x-hold'] = '1';
      return fetch(`${base}/orders`, { method: 'POST', headers, body });
    }

    /** Clears the counters, runs `request`, and returns what it cost. */
    async function cost(
      request: () => Promise<Response>,
    ): Promise<{ response: Response; ops: string[]; sent: string[] }> {
      operations.length = 0;
      counted.sent.length = 0;
      const response = await request();
      await response.arrayBuffer();
      return { response, ops: [...operations], sent: [...counted.sent] };
    }

    function note(kind: Case, ops: string[], sent: string[]): void {
      const row = table.get(name) ?? {};
      row[kind] = `${ops.length} / ${sent.length}`;
      table.set(name, row);
    }

    it(`R1, L1: a new key costs acquire + complete (${newKeyCalls} backend calls), no renewal`, async () => {
      const { response, ops, sent } = await cost(() => send(randomUUID(), 'new'));
      expect(response.status).toBe(201);
      expect(response.headers.get('idempotent-replayed')).toBeNull();
      expect(ops).toEqual(['acquire', 'complete']);
      expect(sent).toEqual(expected.newKey);
      note('new key', ops, sent);
    });

    it('R2: a replay costs one acquire (1 backend call)', async () => {
      const key = randomUUID();
      await (await send(key, 'replayed')).arrayBuffer();
      const { response, ops, sent } = await cost(() => send(key, 'replayed'));
      expect(response.headers.get('idempotent-replayed')).toBe('true');
      expect(ops).toEqual(['acquire']);
      expect(sent).toEqual(expected.acquire);
      note('replay', ops, sent);
    });

    it('L2: a 409 costs one acquire (1 backend call)', async () => {
      const key = randomUUID();
      const held = new Promise<void>((resolve) => (holding = resolve));
      const first = send(key, 'held', true);
      await held;
      const { response, ops, sent } = await cost(() => send(key, 'held'));
      expect(response.status).toBe(409);
      expect(ops).toEqual(['acquire']);
      expect(sent).toEqual(expected.acquire);
      note('409', ops, sent);
      release!();
      expect((await first).status).toBe(201);
    });

    it('F2: a 422 costs one acquire (1 backend call)', async () => {
      const key = randomUUID();
      await (await send(key, 'original')).arrayBuffer();
      const { response, ops, sent } = await cost(() => send(key, 'different'));
      expect(response.status).toBe(422);
      expect(ops).toEqual(['acquire']);
      expect(sent).toEqual(expected.acquire);
      note('422', ops, sent);
    });
  });
}

describeRoundTrips(
  'SqliteStore',
  true,
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oncely-round-trips-'));
    const sent: string[] = [];
    // verbose: better-sqlite3 reports every statement it executes, BEGIN and COMMIT included.
    const database = new Database(join(dir, 'records.db'), {
      verbose: (sql) => sent.push(String(sql).trim().split(/\s+/)[0]!),
    });
    database.pragma('journal_mode = WAL');
    const store = new SqliteStore({ database, sweepIntervalMs: 0 });
    return {
      store,
      sent,
      cleanup: async () => {
        await store.close();
        database.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  // acquire: a read that misses, then the claim in one BEGIN IMMEDIATE transaction; complete: one UPDATE.
  // A duplicate is one read (WAL readers never wait for the writer).
  { newKey: ['SELECT', 'BEGIN', 'INSERT', 'COMMIT', 'UPDATE'], acquire: ['SELECT'] },
);

describeRoundTrips(
  'RedisStore (ioredis)',
  redisUp,
  async () => {
    const client = new Redis(REDIS_URL);
    const prefix = `oncely-round-trips:${randomUUID()}:`;
    const sent: string[] = [];
    // Every command RedisStore sends goes through callBuffer: one call, one round trip.
    const counting = {
      callBuffer: (command: string, ...args: Array<string | Buffer>) => {
        sent.push(command);
        return client.callBuffer(command, ...args);
      },
    };
    return {
      store: new RedisStore({ client: counting, prefix }),
      sent,
      cleanup: async () => {
        const keys = await client.keys(`${prefix}*`);
        if (keys.length > 0) await client.del(...keys);
        await client.quit();
      },
    };
  },
  // One Lua script per operation.
  { newKey: ['EVALSHA', 'EVALSHA'], acquire: ['EVALSHA'] },
);

describeRoundTrips(
  'PostgresStore (pg)',
  postgresUp,
  async () => {
    const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 2 });
    const schema = `oncely_round_trips_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
    await pool.query(`CREATE SCHEMA ${schema}`);
    const sent: string[] = [];
    // Every statement PostgresStore runs goes through pool.query: one call, one round trip.
    const counting = {
      query: (config: { text: string; values?: unknown[]; name?: string }) => {
        sent.push(config.text.trim().split(/\s+/)[0]!);
        return pool.query(config);
      },
    };
    const store = new PostgresStore({ pool: counting, schema, sweepIntervalMs: 0 });
    await store.migrate();
    return {
      store,
      sent,
      cleanup: async () => {
        await store.close();
        await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
        await pool.end();
      },
    };
  },
  // The acquire CTE (WITH live …, taken AS (INSERT …)) and the fenced UPDATE.
  { newKey: ['WITH', 'UPDATE'], acquire: ['WITH'] },
);
