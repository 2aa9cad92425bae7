/**
 * L5 across processes: four gateway processes share one store and one counting upstream; every key
 * is sent C times at once, spread over the four, and the upstream must run each key exactly once.
 * Run for SQLite (one file), Redis (a random prefix) and PostgreSQL (a schema of its own).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/stores/postgres.js';
import { SqliteStore } from '../../src/stores/sqlite.js';
import { killAll, spawnTs, type TsChild } from '../support/child.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from '../support/services.js';
import type { RaceStore } from './_race-gateway.js';

/** Keys per store. */
const K = 200;
/** Concurrent copies of each key, spread over the gateways. */
const C = 6;
const GATEWAYS = 4;
/** Keys in flight at once (K × C requests would all be open together otherwise). */
const KEYS_AT_ONCE = 25;

afterAll(() => killAll());

/**
 * The one upstream behind every gateway. It counts executions per Idempotency-Key and holds each
 * execution until every copy of its key is accounted for (answered by a gateway, or executed too),
 * so all C copies meet the key in flight: the race for the lock is real, and its losers' answer is
 * fixed (409) rather than depending on timing. A duplicate execution releases the hold as well, so
 * a broken lock fails the counts below instead of hanging.
 */
class CountingUpstream {
  readonly server: Server;
  readonly executions = new Map<string, number>();
  #total = 0;
  readonly #answered = new Map<string, number>();
  readonly #held = new Map<string, Array<() => void>>();

  constructor() {
    this.server = createServer(async (req, res) => {
      req.resume();
      await finished(req);
      const key = String(req.headers['idempotency-key']);
      this.executions.set(key, (this.executions.get(key) ?? 0) + 1);
      const execution = ++this.#total;
      await new Promise<void>((release) => {
        this.#held.set(key, [...(this.#held.get(key) ?? []), release]);
        this.#check(key);
      });
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ key, execution }));
    });
  }

  /** A gateway answered one copy of `key` to the test. */
  answered(key: string): void {
    this.#answered.set(key, (this.#answered.get(key) ?? 0) + 1);
    this.#check(key);
  }

  #check(key: string): void {
    if ((this.executions.get(key) ?? 0) + (this.#answered.get(key) ?? 0) < C) return;
    for (const release of this.#held.get(key) ?? []) release();
    this.#held.delete(key);
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    for (const releases of this.#held.values()) for (const release of releases) release();
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

interface Answer {
  gateway: number;
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function post(base: string, gateway: number, key: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      new URL('/orders', base),
      {
        method: 'POST',
        // A connection per request: a kept-alive socket the server is just closing would fail the
        // request with ECONNRESET, which says nothing about the gateway.
        agent: false,
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          body += chunk;
        });
        res.on('end', () => resolve({ gateway, status: res.statusCode!, headers: res.headers, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end('{"amount":1000}');
  });
}

/** Start the gateways (in parallel), run the race, stop them; returns every answer per key. */
async function race(store: RaceStore) {
  const upstream = new CountingUpstream();
  const upstreamUrl = await upstream.listen();
  const children: TsChild[] = [];
  try {
    const entry = join(import.meta.dirname, '_race-gateway.ts');
    for (let i = 0; i < GATEWAYS; i++) {
      children.push(spawnTs(entry, [upstreamUrl, JSON.stringify(store)]));
    }
    const spawned = performance.now();
    const urls = await Promise.all(
      children.map(async (child) => (await child.next<{ type: 'ready'; url: string }>('ready')).url),
    );
    const startupSeconds = (performance.now() - spawned) / 1_000;
    expect(new Set(children.map((child) => child.pid)).size).toBe(GATEWAYS);

    const keys = Array.from({ length: K }, (_, i) => `race-${i}-${randomUUID()}`);
    const raced = new Map<string, Answer[]>();
    const replays = new Map<string, Answer>();
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: KEYS_AT_ONCE }, async () => {
        while (next < K) {
          const index = next++;
          const key = keys[index]!;
          // All C copies leave together; copy c goes to gateway (index + c) mod 4, so every
          // gateway sees every position in the race.
          const copies = Array.from({ length: C }, (_, c) => {
            const gateway = (index + c) % GATEWAYS;
            return post(urls[gateway]!, gateway, key).then((answer) => {
              upstream.answered(key);
              return answer;
            });
          });
          const answers = await Promise.all(copies);
          raced.set(key, answers);
          // R2 across processes: a gateway other than the winner replays it (rotating over the three).
          const winner = answers.find((answer) => answer.status === 201)?.gateway ?? 0;
          const other = (winner + 1 + (index % (GATEWAYS - 1))) % GATEWAYS;
          replays.set(key, await post(urls[other]!, other, key));
        }
      }),
    );
    const seconds = (performance.now() - started) / 1_000;
    return { upstream, keys, raced, replays, seconds, startupSeconds };
  } finally {
    await Promise.all(
      children.map(async (child) => {
        // A graceful stop first (in-flight requests finish); the kill is the backstop.
        await child.ask({ type: 'close' }, 'closed').catch(() => {});
        await child.kill();
      }),
    );
    await upstream.close();
  }
}

function describeRace(
  name: string,
  available: boolean,
  setup: () => Promise<{ store: RaceStore; cleanup(): Promise<void> }>,
) {
  describe.skipIf(!available)(`gateway race: ${GATEWAYS} processes over ${name}`, () => {
    it(`L5, L2, R2: ${K} keys × ${C} concurrent copies over ${GATEWAYS} gateway processes run the upstream exactly ${K} times`, async () => {
      const { store, cleanup } = await setup();
      try {
        const { upstream, keys, raced, replays, seconds, startupSeconds } = await race(store);

        // L5: exactly one execution per key, K in all.
        const executions = [...upstream.executions.values()];
        expect(
          executions.reduce((sum, count) => sum + count, 0),
          'upstream executions',
        ).toBe(K);
        expect(upstream.executions.size).toBe(K);
        expect(
          executions.filter((count) => count !== 1),
          'keys not executed exactly once',
        ).toEqual([]);

        const wins = Array<number>(GATEWAYS).fill(0);
        const replayedBy = Array<number>(GATEWAYS).fill(0);
        let conflicts = 0;
        for (const key of keys) {
          const answers = raced.get(key)!;
          const fresh = answers.filter(
            (answer) => answer.status === 201 && answer.headers['idempotent-replayed'] === undefined,
          );
          // One winner; every other copy met the key in flight (L2).
          expect(fresh, key).toHaveLength(1);
          const losers = answers.filter((answer) => answer !== fresh[0]);
          for (const loser of losers) {
            expect(loser.status, key).toBe(409);
            expect(JSON.parse(loser.body).code, key).toBe('idempotency_key_in_use');
          }
          conflicts += losers.length;
          wins[fresh[0]!.gateway]!++;
          expect(JSON.parse(fresh[0]!.body)).toMatchObject({ key });
          // R2: another process replays the winner's response, byte for byte.
          const replay = replays.get(key)!;
          expect(replay.gateway).not.toBe(fresh[0]!.gateway);
          expect(replay.status, key).toBe(201);
          expect(replay.headers['idempotent-replayed'], key).toBe('true');
          expect(replay.body, key).toBe(fresh[0]!.body);
          replayedBy[replay.gateway]!++;
        }
        console.info(
          `gateway race over ${name}: ${K} keys × ${C} copies over ${GATEWAYS} processes (started in ` +
            `${startupSeconds.toFixed(1)} s) in ${seconds.toFixed(1)} s: ${upstream.executions.size} upstream ` +
            `executions, ${conflicts} × 409, ${K} replays; keys won per process ${JSON.stringify(wins)}, ` +
            `replayed per process ${JSON.stringify(replayedBy)}`,
        );
      } finally {
        await cleanup();
      }
    }, 120_000);
  });
}

describeRace('SQLite (one shared file)', true, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'oncely-gwrace-'));
  const path = join(dir, 'records.db');
  // Create the file and table once, before four processes open it together.
  await new SqliteStore({ path }).close();
  return {
    store: { kind: 'sqlite', path },
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

describeRace('Redis (a random prefix)', await serviceAvailable('redis'), async () => {
  const prefix = `oncely-gwrace:${randomUUID()}:`;
  return {
    store: { kind: 'redis', url: REDIS_URL, prefix },
    cleanup: async () => {
      // Leave nothing behind: every key this run wrote sits under its random prefix.
      const client = new Redis(REDIS_URL);
      let cursor = '0';
      do {
        const [next, found] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
        if (found.length > 0) await client.del(...found);
        cursor = next;
      } while (cursor !== '0');
      await client.quit();
    },
  };
});

describeRace('PostgreSQL (a schema of its own)', await serviceAvailable('postgres'), async () => {
  const schema = `oncely_gwrace_${randomBytes(6).toString('hex')}`;
  const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 1 });
  await pool.query(`CREATE SCHEMA ${schema}`);
  const migrator = new PostgresStore({ pool, schema, sweepIntervalMs: 0 });
  await migrator.migrate();
  await migrator.close();
  return {
    store: { kind: 'postgres', url: POSTGRES_URL, schema },
    cleanup: async () => {
      await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await pool.end();
    },
  };
});
