/**
 * Store benchmark, in three parts (select with --only=throughput,scale,sweep):
 *  - throughput: new-key and replay req/s, p99 and server CPU per store (memory, SQLite file with
 *    synchronous=full (the default) and =normal, Redis, PostgreSQL) against the bare handler and the
 *    memory store, in the same rounds;
 *  - scale: replay latency with 10k vs 1M live records (SQLite, PostgreSQL), the big tables filled
 *    by bulk inserts in the store's own table format;
 *  - sweep: replay latency while 100k expired records are swept vs without.
 *
 *   npm run build && node bench/stores.mjs [--quick] [--only=…] [--scale=1000000] [--rounds=N] [--duration=S]
 *
 * Needs Redis at $BENCH_REDIS_URL (redis://127.0.0.1:6379) and PostgreSQL at $BENCH_POSTGRES_URL
 * (postgres://postgres@127.0.0.1:5432/test). Everything is created under a random prefix / schema /
 * temporary directory and removed at the end.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Redis } from 'ioredis';
import pg from 'pg';
import { postgresMigrationSql } from '../dist/stores/postgres.js';
import { SqliteStore } from '../dist/stores/sqlite.js';
import {
  fmt,
  header,
  keyPrefix,
  load,
  machine,
  markdownTable,
  median,
  parseFlags,
  rotated,
  runRounds,
  SUMMARY_HEADER,
  startServer,
  summarise,
  summaryRow,
  warmKeyList,
  warmKeys,
  writeResults,
} from './lib/harness.mjs';

const flags = parseFlags(process.argv.slice(2), { duration: 3 });
const info = machine();
const parts = flags.only ?? ['roundtrips', 'throughput', 'scale', 'sweep'];
const scaleArg = process.argv.find((a) => a.startsWith('--scale='));
const BIG = scaleArg ? Number(scaleArg.split('=')[1]) : flags.quick ? 100_000 : 1_000_000;
const SMALL = 10_000;
const EXPIRED = flags.quick ? 20_000 : 100_000;
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const POSTGRES_URL = process.env.BENCH_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

const run = randomBytes(4).toString('hex');
const dir = mkdtempSync(join(tmpdir(), 'oncely-bench-'));
const redisPrefix = `oncely-bench:${run}:`;
const schemas = [];
const pgClient = new pg.Client({ connectionString: POSTGRES_URL });
await pgClient.connect();
// The scope every benchmark request gets (no Authorization header): SHA-256 of ''.
const SCOPE = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const FILLER_BODY = Buffer.alloc(300, 'x');
const FILLER_HEADERS = JSON.stringify({ 'content-type': 'application/json' });

async function newSchema(label) {
  const schema = `oncely_bench_${run}_${label}`;
  await pgClient.query(`CREATE SCHEMA ${schema}`);
  schemas.push(schema);
  await pgClient.query(postgresMigrationSql({ schema }));
  return schema;
}

/** Bulk-insert `count` completed (or, with `expired`, already expired) records into SQLite. */
function fillSqlite(path, count, { expired = false, tag = 'fill' } = {}) {
  new SqliteStore({ path, sweepIntervalMs: 0 }).close(); // creates the table and its index
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  const insert = db.prepare(
    `INSERT INTO oncely_records_v1 (scope, key, fingerprint, token, updated_at, expires_at, status, headers, body, body_omitted)
     VALUES (?, ?, ?, NULL, ?, ?, 201, ?, ?, 0)`,
  );
  const now = Date.now();
  const expiresAt = expired ? now - 3_600_000 : now + 86_400_000;
  const fill = db.transaction((from, to) => {
    for (let i = from; i < to; i++) {
      insert.run(
        SCOPE,
        `${tag}${i.toString(36).padStart(8, '0')}`,
        'f'.repeat(64),
        now,
        expiresAt,
        FILLER_HEADERS,
        FILLER_BODY,
      );
    }
  });
  for (let i = 0; i < count; i += 50_000) fill(i, Math.min(count, i + 50_000));
  db.close();
}

/** The same in PostgreSQL, as one INSERT … SELECT over generate_series. */
async function fillPostgres(schema, count, { expired = false, tag = 'fill' } = {}) {
  await pgClient.query(
    `INSERT INTO ${schema}.oncely_records_v1
       (scope, key, fingerprint, token, state, status, headers, body, body_omitted, created_at, updated_at, expires_at)
     SELECT $1, $2 || lpad(g::text, 8, '0'), repeat('f', 64), NULL, 'completed', 201, $3::jsonb, $4::bytea, false,
            now(), now(), now() + ($5 || ' milliseconds')::interval
     FROM generate_series(1, $6::integer) g`,
    [SCOPE, tag, FILLER_HEADERS, FILLER_BODY, expired ? -3_600_000 : 86_400_000, count],
  );
  await pgClient.query(`VACUUM ANALYZE ${schema}.oncely_records_v1`);
}

const sections = [header('Stores', flags, info)];
const data = { info, flags, big: BIG };

try {
  if (parts.includes('roundtrips')) {
    // Exact counts, not load: N new keys, then N replays, one at a time, counted at the driver.
    const N = 200;
    const schema = await newSchema('rt');
    const rows = [];
    data.roundtrips = {};
    for (const [name, config] of [
      ['SQLite', { store: 'sqlite', sqlitePath: join(dir, 'rt.db'), sweepIntervalMs: 0 }],
      ['Redis', { store: 'redis', redisUrl: REDIS_URL, redisPrefix }],
      ['PostgreSQL', { store: 'postgres', postgresUrl: POSTGRES_URL, schema, sweepIntervalMs: 0 }],
    ]) {
      const server = await startServer('store.mjs', { ...config, countTrips: true });
      try {
        const keys = warmKeyList(keyPrefix(), N);
        const before = await server.call('trips');
        await warmKeys(server.url, keys.slice(0, N - 1)); // N - 1 new keys, then 1 replay of the first
        const mid = await server.call('trips');
        for (const key of keys.slice(0, N - 1)) await warmKeys(server.url, [key]); // 2 replays each
        const after = await server.call('trips');
        const per = (from, to, n) =>
          Object.keys(to)
            .filter((k) => (to[k] ?? 0) - (from[k] ?? 0) > 0)
            .map((k) => `${k} ×${fmt(((to[k] ?? 0) - (from[k] ?? 0)) / n, 2)}`)
            .join(', ');
        // Phase 1: N-1 new keys + 1 replay; phase 2: 2(N-1) replays. Replays per request from phase 2,
        // new keys from phase 1 less the one replay.
        const replayTotal =
          Object.values(after).reduce((a, b) => a + b, 0) - Object.values(mid).reduce((a, b) => a + b, 0);
        const replayPer = replayTotal / (2 * (N - 1));
        const newTotal =
          Object.values(mid).reduce((a, b) => a + b, 0) - Object.values(before).reduce((a, b) => a + b, 0);
        const newPer = (newTotal - replayPer) / (N - 1);
        data.roundtrips[name] = { before, mid, after };
        rows.push([
          name,
          fmt(newPer, 2),
          per(before, mid, N),
          fmt(replayPer, 2),
          per(mid, after, 2 * (N - 1)),
        ]);
      } finally {
        await server.close();
      }
    }
    sections.push(
      '### Round trips to the backend per request (counted at the driver)',
      '',
      markdownTable(['store', 'new key', 'of which (per request)', 'replay', 'of which (per request)'], rows),
      '',
    );
  }

  if (parts.includes('throughput')) {
    const pgSchema = await newSchema('tp');
    const stores = [
      { name: 'bare handler', config: { store: 'bare' } },
      { name: 'memory', config: { store: 'memory' } },
      {
        name: 'SQLite file (synchronous=full)',
        config: { store: 'sqlite', sqlitePath: join(dir, 'tp-full.db') },
      },
      {
        name: 'SQLite file (synchronous=normal)',
        config: { store: 'sqlite', sqlitePath: join(dir, 'tp-normal.db'), synchronous: 'normal' },
      },
      { name: 'Redis (ioredis)', config: { store: 'redis', redisUrl: REDIS_URL, redisPrefix } },
      {
        name: 'PostgreSQL (pg Pool, 10)',
        config: { store: 'postgres', postgresUrl: POSTGRES_URL, schema: pgSchema },
      },
    ].map((s) => ({ ...s, script: 'store.mjs' }));
    console.log(
      `stores/throughput: ${flags.rounds} rounds × ${flags.duration} s, load average ${info.loadAverage}`,
    );
    const runs = await runRounds(stores, ['new', 'replay'], flags);
    const rows = [];
    const extra = [];
    const summaries = {};
    for (const scenario of ['new', 'replay']) {
      for (const store of stores) {
        const mine = runs[`${store.name}/${scenario}`];
        const s = summarise(mine, store === stores[0] ? undefined : runs[`bare handler/${scenario}`]);
        const vsMemory = summarise(mine, runs[`memory/${scenario}`]);
        summaries[`${store.name}/${scenario}`] = { ...s, vsMemory: vsMemory.ratio };
        rows.push(summaryRow(store.name, scenario, s));
        extra.push([
          store.name,
          scenario,
          fmt(vsMemory.ratio, 2),
          fmt(s.p50, 2),
          fmt(s.p99, 2),
          fmt(s.p99Added, 2),
        ]);
      }
    }
    data.throughput = { summaries, runs };
    sections.push(
      '### Throughput per store (ratios vs the bare handler)',
      '',
      markdownTable(SUMMARY_HEADER, rows),
      '',
      '### Against the memory store, and latency',
      '',
      markdownTable(
        ['store', 'scenario', 'req/s ratio vs memory', 'p50 ms', 'p99 ms', 'p99 added vs bare, ms'],
        extra,
      ),
      '',
    );
  }

  if (parts.includes('scale')) {
    console.log(`stores/scale: filling ${SMALL} and ${BIG} records in SQLite and PostgreSQL…`);
    let t = performance.now();
    const smallPath = join(dir, 'scale-small.db');
    const bigPath = join(dir, 'scale-big.db');
    fillSqlite(smallPath, SMALL);
    fillSqlite(bigPath, BIG);
    console.log(`  SQLite filled in ${fmt((performance.now() - t) / 1000, 1)} s`);
    t = performance.now();
    const smallSchema = await newSchema('small');
    const bigSchema = await newSchema('big');
    await fillPostgres(smallSchema, SMALL);
    await fillPostgres(bigSchema, BIG);
    console.log(`  PostgreSQL filled in ${fmt((performance.now() - t) / 1000, 1)} s`);
    const variants = [
      {
        name: `SQLite ${SMALL / 1000}k`,
        config: { store: 'sqlite', sqlitePath: smallPath, sweepIntervalMs: 0 },
      },
      { name: `SQLite ${BIG / 1000}k`, config: { store: 'sqlite', sqlitePath: bigPath, sweepIntervalMs: 0 } },
      {
        name: `PostgreSQL ${SMALL / 1000}k`,
        config: { store: 'postgres', postgresUrl: POSTGRES_URL, schema: smallSchema, sweepIntervalMs: 0 },
      },
      {
        name: `PostgreSQL ${BIG / 1000}k`,
        config: { store: 'postgres', postgresUrl: POSTGRES_URL, schema: bigSchema, sweepIntervalMs: 0 },
      },
    ].map((v) => ({ ...v, script: 'store.mjs' }));
    const runs = await runRounds(variants, ['replay'], flags);
    const rows = [];
    for (const [small, big] of [
      [variants[0], variants[1]],
      [variants[2], variants[3]],
    ]) {
      const a = runs[`${small.name}/replay`];
      const b = runs[`${big.name}/replay`];
      const n = Math.min(a.length, b.length);
      const ratio = (field) => median(Array.from({ length: n }, (_, i) => b[i][field] / a[i][field]));
      const verdict = (r) => `${fmt(r, 2)} ${r <= 1.2 ? '✓' : '✗'}`;
      rows.push([
        `${small.name} → ${big.name}`,
        `${fmt(median(a.map((r) => r.mean)), 2)} → ${fmt(median(b.map((r) => r.mean)), 2)}`,
        verdict(ratio('mean')),
        `${fmt(median(a.map((r) => r.p99)), 2)} → ${fmt(median(b.map((r) => r.p99)), 2)}`,
        verdict(ratio('p99')),
        `${fmt(median(a.map((r) => r.rps)), 0)} → ${fmt(median(b.map((r) => r.rps)), 0)}`,
        `${fmt(median(a.map((r) => r.cpuPerReq)), 1)} → ${fmt(median(b.map((r) => r.cpuPerReq)), 1)}`,
      ]);
    }
    data.scale = { runs };
    sections.push(
      `### Replay latency with ${SMALL.toLocaleString('en')} vs ${BIG.toLocaleString('en')} live records (target: ratio ≤ 1.2)`,
      '',
      markdownTable(
        ['store', 'mean ms', 'mean ratio', 'p99 ms', 'p99 ratio', 'req/s', 'server CPU µs/req'],
        rows,
      ),
      '',
    );
  }

  if (parts.includes('sweep')) {
    const sweepSchema = await newSchema('sweep');
    const sqlitePath = join(dir, 'sweep.db');
    const cases = [
      {
        name: 'SQLite, 500 rows per event-loop turn (as its sweep timer does)',
        config: { store: 'sqlite', sqlitePath, sweepIntervalMs: 0 },
        mode: 'batched',
        fill: (n, tag) => fillSqlite(sqlitePath, n, { expired: true, tag }),
      },
      {
        name: 'SQLite, one awaited store.sweep()',
        config: { store: 'sqlite', sqlitePath, sweepIntervalMs: 0 },
        mode: 'sweep',
        fill: (n, tag) => fillSqlite(sqlitePath, n, { expired: true, tag }),
      },
      {
        name: 'PostgreSQL, store.sweep() (as its sweep timer does)',
        config: { store: 'postgres', postgresUrl: POSTGRES_URL, schema: sweepSchema, sweepIntervalMs: 0 },
        mode: 'sweep',
        fill: (n, tag) => fillPostgres(sweepSchema, n, { expired: true, tag }),
      },
    ];
    const duration = Math.max(flags.duration, 4);
    const results = {};
    console.log(`stores/sweep: ${EXPIRED} expired records, ${flags.rounds} rounds × ${duration} s`);
    for (let round = 0; round < flags.rounds; round++) {
      for (const c of rotated(cases, round)) {
        const server = await startServer('store.mjs', c.config);
        try {
          const prefix = keyPrefix();
          const keys = warmKeyList(prefix);
          await warmKeys(server.url, keys);
          for (const condition of rotated(['without', 'with'], round)) {
            await load(server.url, {
              scenario: 'replay',
              keys,
              duration: flags.warmup,
              connections: flags.connections,
            });
            let sweep;
            if (condition === 'with') await c.fill(EXPIRED, `exp${round}${keyPrefix()}`);
            server.start();
            const timer =
              condition === 'with'
                ? new Promise((resolve) => setTimeout(resolve, 1_000)).then(() =>
                    server.call('sweep', c.mode),
                  )
                : undefined;
            const result = await load(server.url, {
              scenario: 'replay',
              keys,
              duration,
              connections: flags.connections,
            });
            const used = await server.stop();
            if (timer) sweep = await timer;
            result.cpuPerReq = used.cpuMicros / result.total;
            result.sweep = sweep;
            (results[`${c.name}/${condition}`] ??= []).push(result);
            console.log(
              `  ${c.name.padEnd(60)} ${condition.padEnd(7)} ${fmt(result.rps, 0)} req/s p99 ${fmt(result.p99, 2)} ms max ${fmt(result.max, 1)} ms${sweep ? ` — swept ${sweep.removed} in ${fmt(sweep.ms, 0)} ms` : ''}`,
            );
          }
        } finally {
          await server.close();
        }
      }
    }
    const rows = cases.map((c) => {
      const without = results[`${c.name}/without`];
      const withSweep = results[`${c.name}/with`];
      const n = Math.min(without.length, withSweep.length);
      const p99Ratio = median(Array.from({ length: n }, (_, i) => withSweep[i].p99 / without[i].p99));
      return [
        c.name,
        `${fmt(median(without.map((r) => r.p99)), 2)} → ${fmt(median(withSweep.map((r) => r.p99)), 2)}`,
        fmt(p99Ratio, 2),
        `${fmt(median(without.map((r) => r.max)), 1)} → ${fmt(median(withSweep.map((r) => r.max)), 1)}`,
        `${fmt(median(without.map((r) => r.rps)), 0)} → ${fmt(median(withSweep.map((r) => r.rps)), 0)}`,
        `${fmt(median(withSweep.map((r) => r.sweep.removed)), 0)} in ${fmt(median(withSweep.map((r) => r.sweep.ms)), 0)} ms`,
      ];
    });
    data.sweep = results;
    sections.push(
      `### Replays while ${EXPIRED.toLocaleString('en')} expired records are swept (sweep starts 1 s into a ${duration} s window)`,
      '',
      markdownTable(
        ['store / how', 'replay p99 ms (without → with)', 'p99 ratio', 'max ms', 'req/s', 'swept'],
        rows,
      ),
      '',
    );
  }
} finally {
  for (const schema of schemas) await pgClient.query(`DROP SCHEMA ${schema} CASCADE`).catch(() => {});
  await pgClient.end();
  rmSync(dir, { recursive: true, force: true });
  const redis = new Redis(REDIS_URL);
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${redisPrefix}*`, 'COUNT', 1000);
    cursor = next;
    if (batch.length > 0) deleted += await redis.unlink(...batch);
  } while (cursor !== '0');
  await redis.quit();
  if (deleted > 0) console.log(`removed ${deleted} Redis keys under ${redisPrefix}`);
}

const markdown = sections.join('\n');
const file = writeResults(flags.quick ? 'stores.quick' : 'stores', data, markdown);
console.log(`\n${markdown}\nwritten to ${file}`);
