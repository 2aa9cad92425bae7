import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { POSTGRES_URL, serviceAvailable } from '../../test/support/services.js';
import type { AcquireInput } from '../core/store.js';
import { describeStoreContract } from '../testing.js';
import { type PgQueryable, PostgresStore, postgresMigrationSql } from './postgres.js';

const available = await serviceAvailable('postgres');
const schema = `oncely_test_${randomBytes(6).toString('hex')}`;

/** A pool that records every statement sent through it. */
function counting(pool: PgQueryable): PgQueryable & { texts: string[] } {
  const texts: string[] = [];
  return {
    texts,
    query(config) {
      texts.push(config.text);
      return pool.query(config);
    },
  };
}

/** Polls `check` until it holds or the deadline passes (real waits: locks, expiry). */
async function eventually(check: () => Promise<boolean>, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe.skipIf(!available)('PostgresStore', () => {
  const pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 4 });
  const sql = postgres(POSTGRES_URL, { max: 4, onnotice: () => {} });

  beforeAll(async () => {
    await pool.query(`CREATE SCHEMA ${schema}`);
    await new PostgresStore({ pool, schema, sweepIntervalMs: 0 }).migrate();
    await new PostgresStore({ sql, schema, table: 'records_js', sweepIntervalMs: 0 }).migrate();
  });
  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
    await sql.end();
  });

  describeStoreContract('PostgresStore (pg Pool)', () => new PostgresStore({ pool, schema }));
  describeStoreContract(
    'PostgresStore (postgres.js)',
    () => new PostgresStore({ sql, schema, table: 'records_js' }),
  );

  const scope = `scope-${randomUUID()}`;
  const input = (key: string, extra: Partial<AcquireInput> = {}): AcquireInput => ({
    scope,
    key,
    fingerprint: 'fp-1',
    token: randomUUID(),
    leaseMs: 60_000,
    ...extra,
  });
  const response = {
    status: 200,
    headers: { 'content-type': 'text/plain' },
    body: new Uint8Array([1]),
    bodyOmitted: false,
  };

  describe('regressions', () => {
    it('migrate() is idempotent, also when instances run it at once', async () => {
      const table = `records_${randomBytes(4).toString('hex')}`;
      const other = new pg.Pool({ connectionString: POSTGRES_URL, max: 2 });
      try {
        const stores = [pool, other, pool].map(
          (p) => new PostgresStore({ pool: p, schema, table, sweepIntervalMs: 0 }),
        );
        await Promise.all(stores.map((s) => s.migrate()));
        await stores[0]!.migrate();
        const { rows } = await pool.query(
          `SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 ORDER BY indexname`,
          [schema, table],
        );
        expect(rows.map((r) => r.indexname)).toEqual([`${table}_expires_at_idx`, `${table}_pkey`]);
        expect((await stores[1]!.acquire(input(randomUUID()))).state).toBe('acquired');
      } finally {
        await other.end();
      }
    });

    it('migrate() runs exactly the exported postgresMigrationSql', async () => {
      const table = `records_${randomBytes(4).toString('hex')}`;
      const counted = counting(pool);
      await new PostgresStore({ pool: counted, schema, table, sweepIntervalMs: 0 }).migrate();
      expect(counted.texts).toHaveLength(1);
      expect(counted.texts[0]).toContain(postgresMigrationSql({ schema, table }));
    });

    it('L5: concurrent acquires through two pools on separate connections have one winner', async () => {
      const other = new pg.Pool({ connectionString: POSTGRES_URL, max: 4 });
      try {
        const a = new PostgresStore({ pool, schema, sweepIntervalMs: 0 });
        const b = new PostgresStore({ pool: other, schema, sweepIntervalMs: 0 });
        const key = randomUUID();
        const results = await Promise.all(
          Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? a : b).acquire(input(key))),
        );
        expect(results.filter((r) => r.state === 'acquired')).toHaveLength(1);
        expect(results.filter((r) => r.state === 'in-flight')).toHaveLength(39);
      } finally {
        await other.end();
      }
    });

    it('L5: each operation is one statement', async () => {
      const counted = counting(pool);
      const store = new PostgresStore({ pool: counted, schema, sweepIntervalMs: 0 });
      const first = input(randomUUID());
      const steps: Array<() => Promise<unknown>> = [
        () => store.acquire(first),
        () => store.acquire(input(first.key)),
        () => store.renew(scope, first.key, first.token, 60_000),
        () => store.complete(scope, first.key, first.token, response, 60_000),
        () => store.acquire(input(first.key)),
        () => store.get(scope, first.key),
        () => store.release(scope, first.key, first.token),
      ];
      for (const step of steps) {
        const before = counted.texts.length;
        await step();
        expect(counted.texts.length - before).toBe(1);
      }
    });

    it('L2, R2: a duplicate acquire (409 or replay) only reads: it neither locks nor rewrites the row', async () => {
      const store = new PostgresStore({ pool, schema, sweepIntervalMs: 0 });
      const first = input(randomUUID());
      // xmax is set by any row lock or update; ctid changes with every new row version.
      const version = async () =>
        (
          await pool.query(
            `SELECT ctid::text, xmax::text FROM ${schema}.oncely_records_v1 WHERE scope = $1 AND key = $2`,
            [scope, first.key],
          )
        ).rows[0];
      await store.acquire(first);
      const inFlight = await version();
      expect(inFlight.xmax).toBe('0');
      expect((await store.acquire(input(first.key))).state).toBe('in-flight');
      expect(await version()).toEqual(inFlight);
      await store.complete(scope, first.key, first.token, response, 60_000);
      const completed = await version();
      expect((await store.acquire(input(first.key))).state).toBe('completed');
      expect(await version()).toEqual(completed);
    });

    it('L5: an acquire that waited on a concurrent insert reports the row that insert committed', async () => {
      const key = randomUUID();
      const client = await pool.connect();
      const counted = counting(pool);
      try {
        await client.query('BEGIN');
        // The first acquire, inside a transaction that is still open: its row is not committed yet.
        const inTransaction = new PostgresStore({ pool: client, schema, sweepIntervalMs: 0 });
        expect((await inTransaction.acquire(input(key))).state).toBe('acquired');
        const waiting = new PostgresStore({ pool: counted, schema, sweepIntervalMs: 0 }).acquire(
          input(key, { fingerprint: 'fp-2' }),
        );
        // The second acquire blocks on the uncommitted row; its snapshot predates the commit below.
        await eventually(async () => {
          const { rows } = await pool.query(
            `SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO "${schema}"%'`,
          );
          return rows.length > 0;
        }, 'the second acquire to wait for the row lock');
        await client.query('COMMIT');
        expect(await waiting).toEqual({ state: 'in-flight', fingerprint: 'fp-1' });
        // The snapshot could not see the committed row, so the statement ran a second time.
        expect(counted.texts).toHaveLength(2);
      } finally {
        client.release();
      }
    });

    it('L4: the row carries the new owner token after a take-over and the stale owner changes nothing', async () => {
      const store = new PostgresStore({ pool, schema, sweepIntervalMs: 0 });
      const key = randomUUID();
      const stale = input(key, { leaseMs: 30 });
      await store.acquire(stale);
      const fresh = input(key, { fingerprint: 'fp-2' });
      await eventually(async () => (await store.acquire(fresh)).state === 'acquired', 'the lease to run out');
      const row = async () =>
        (
          await pool.query(
            `SELECT token, state, fingerprint, status FROM ${schema}.oncely_records_v1 WHERE scope = $1 AND key = $2`,
            [scope, key],
          )
        ).rows[0];
      expect(await row()).toEqual({
        token: fresh.token,
        state: 'in-flight',
        fingerprint: 'fp-2',
        status: null,
      });
      expect(await store.complete(scope, key, stale.token, response, 60_000)).toBe(false);
      expect(await store.renew(scope, key, stale.token, 60_000)).toBe(false);
      expect(await store.release(scope, key, stale.token)).toBe(false);
      expect(await row()).toEqual({
        token: fresh.token,
        state: 'in-flight',
        fingerprint: 'fp-2',
        status: null,
      });
      expect(await store.complete(scope, key, fresh.token, response, 60_000)).toBe(true);
      expect(await row()).toEqual({ token: null, state: 'completed', fingerprint: 'fp-2', status: 200 });
    });

    it("L3: lease expiry is judged by the database clock, not this machine's", async () => {
      const store = new PostgresStore({ pool, schema, sweepIntervalMs: 0 });
      const key = randomUUID();
      await store.acquire(input(key));
      const realNow = Date.now();
      const spy = vi.spyOn(Date, 'now').mockReturnValue(realNow + 3_600_000);
      try {
        expect(await store.acquire(input(key))).toEqual({ state: 'in-flight', fingerprint: 'fp-1' });
      } finally {
        spy.mockRestore();
      }
      // Moving the database's view of the lease into the past is what lets a new owner in.
      await pool.query(
        `UPDATE ${schema}.oncely_records_v1 SET expires_at = statement_timestamp() - interval '1 second' WHERE scope = $1 AND key = $2`,
        [scope, key],
      );
      expect((await store.acquire(input(key))).state).toBe('acquired');
    });

    describe('sweep', () => {
      const table = `sweep_${randomBytes(4).toString('hex')}`;
      const seed = async (expired: number, live: number) => {
        await pool.query(`TRUNCATE ${schema}.${table}`);
        await pool.query(
          `INSERT INTO ${schema}.${table} (scope, key, fingerprint, state, status, headers, body, created_at, updated_at, expires_at)
           SELECT 's', 'k' || i, 'fp', 'completed', 200, '{}', '\\x00', now(), now(),
                  CASE WHEN i <= $1 THEN now() - interval '1 minute' ELSE now() + interval '1 hour' END
           FROM generate_series(1, $1::integer + $2::integer) AS i`,
          [expired, live],
        );
      };
      const remaining = async () =>
        Number((await pool.query(`SELECT count(*) AS n FROM ${schema}.${table}`)).rows[0].n);

      beforeAll(async () => {
        await new PostgresStore({ pool, schema, table, sweepIntervalMs: 0 }).migrate();
      });

      it('T2: deletes expired records in batches of sweepBatchSize, one statement each, never live ones', async () => {
        await seed(7, 2);
        const counted = counting(pool);
        const store = new PostgresStore({
          pool: counted,
          schema,
          table,
          sweepBatchSize: 3,
          sweepIntervalMs: 0,
        });
        expect(await store.sweep()).toBe(7);
        expect(counted.texts).toHaveLength(3); // 3 + 3 + 1
        expect(await remaining()).toBe(2);
      });

      it('T2: sweep(limit) stops at limit, across batches', async () => {
        await seed(7, 2);
        const counted = counting(pool);
        const store = new PostgresStore({
          pool: counted,
          schema,
          table,
          sweepBatchSize: 3,
          sweepIntervalMs: 0,
        });
        expect(await store.sweep(5)).toBe(5);
        expect(counted.texts).toHaveLength(2); // 3 + 2
        expect(await remaining()).toBe(4);
      });

      it('T2: the sweep finds expired rows through the expires_at index and deletes them by ctid', async () => {
        await seed(50, 20_000);
        await pool.query(`ANALYZE ${schema}.${table}`);
        const counted = counting(pool);
        await new PostgresStore({ pool: counted, schema, table, sweepIntervalMs: 0 }).sweep(10);
        const { rows } = await pool.query(`EXPLAIN ${counted.texts[0]!.replaceAll('$1::integer', '10')}`);
        const plan = rows.map((r) => r['QUERY PLAN']).join('\n');
        // The batch is found through the index, then deleted by ctid: no step scans the table.
        expect(plan).toMatch(new RegExp(`Index Scan using ${table}_expires_at_idx`));
        expect(plan).toMatch(/Tid Scan/);
        expect(plan).not.toMatch(/Seq Scan/);
      });

      it('T2: the background sweep runs on its interval and stops on close()', async () => {
        await seed(3, 1);
        const store = new PostgresStore({ pool, schema, table, sweepIntervalMs: 20 });
        await eventually(async () => (await remaining()) === 1, 'the background sweep');
        await store.close();
      });
    });

    it('close() leaves the pool and sql instance open: they belong to the caller', async () => {
      await new PostgresStore({ pool }).close();
      await new PostgresStore({ sql }).close();
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(await sql`SELECT 1 AS one`).toEqual([{ one: 1 }]);
    });

    it('S2: a missing table is an error the engine turns into 503, not an answer', async () => {
      const store = new PostgresStore({ pool, schema, table: 'never_migrated', sweepIntervalMs: 0 });
      await expect(store.acquire(input(randomUUID()))).rejects.toThrow(/never_migrated/);
    });
  });
});

describe('PostgresStore options', () => {
  const pool = { query: async () => ({ rows: [] }) };
  it.each([
    [{}, /exactly one of options.pool/],
    [{ pool, sql: { unsafe: async () => [] } }, /exactly one of options.pool/],
    [{ pool: {} }, /options.pool must be a pg Pool/],
    [{ sql: {} }, /options.sql must be a postgres.js/],
    [{ pool, table: 'records; DROP TABLE x' }, /options.table must be a plain SQL identifier/],
    [{ pool, table: 'x'.repeat(60) }, /options.table/],
    [{ pool, schema: 'a.b' }, /options.schema must be a plain SQL identifier/],
    [{ pool, sweepIntervalMs: -1 }, /options.sweepIntervalMs/],
    [{ pool, sweepBatchSize: 0 }, /options.sweepBatchSize/],
    [{ pool, prepare: 'yes' }, /options.prepare/],
    [{ pool, onError: 1 }, /options.onError/],
  ])('rejects %o naming the option', (options, message) => {
    expect(() => new PostgresStore(options as never)).toThrow(message);
  });
});
