/**
 * Gateway benchmark: the upstream (the bare handler) direct; behind a plain undici reverse proxy
 * (servers/undici-proxy.mjs); behind the oncely gateway (`startGateway`, as shipped: log level info)
 * with SQLite, Redis and PostgreSQL stores. Scenarios: unkeyed, keyed new, keyed replay.
 * Targets vs the plain proxy, same round: unkeyed ≥ 0.9×, keyed new ≥ 0.75×, replay ≥ 1.0×.
 *
 *   npm run build && node bench/gateway.mjs [--quick] [--rounds=N] [--duration=S] [--only=sqlite,redis,postgres]
 *
 * Server CPU is the proxy process's (the upstream's for "direct"); the upstream's own executions
 * over the window are counted, so replays are proven not to reach it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import {
  fmt,
  header,
  machine,
  markdownTable,
  parseFlags,
  runRounds,
  startServer,
  summarise,
  writeResults,
} from './lib/harness.mjs';

const flags = parseFlags();
const info = machine();
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const POSTGRES_URL = process.env.BENCH_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const TARGETS = { nokey: 0.9, new: 0.75, replay: 1.0 };
const scenarios = ['nokey', 'new', 'replay'];
const stores = flags.only ?? ['sqlite', 'redis', 'postgres'];

const dir = mkdtempSync(join(tmpdir(), 'oncely-bench-gw-'));
const schema = `oncely_bench_gw_${randomBytes(4).toString('hex')}`;
const admin = new pg.Client({ connectionString: POSTGRES_URL });
await admin.connect();
await admin.query(`CREATE SCHEMA ${schema}`);
const postgresUrl = new URL(POSTGRES_URL);
postgresUrl.searchParams.set('options', `-c search_path=${schema}`);

const upstream = await startServer('core.mjs', { variant: 'bare' });
const storeUrls = {
  sqlite: `sqlite:${join(dir, 'gateway.db')}`,
  redis: REDIS_URL, // records carry a 10-minute TTL below, so Redis drops them on its own
  postgres: postgresUrl.toString(),
};
const variants = [
  { name: 'direct (upstream)', script: 'core.mjs', config: { variant: 'bare' } },
  {
    name: 'plain undici proxy',
    script: 'undici-proxy.mjs',
    config: { upstream: upstream.url },
    observer: upstream,
  },
  ...stores.map((store) => ({
    name: `oncely gateway, ${store}`,
    script: 'gateway.mjs',
    config: { upstream: upstream.url, store: storeUrls[store], ttlMs: 600_000 },
    observer: upstream,
  })),
];

const sections = [header('Gateway: direct vs plain undici proxy vs oncely gateway', flags, info)];
let data;
try {
  console.log(`gateway: ${flags.rounds} rounds × ${flags.duration} s, load average ${info.loadAverage}`);
  const runs = await runRounds(variants, scenarios, flags);
  const rows = [];
  const summaries = {};
  for (const scenario of scenarios) {
    const proxy = runs[`plain undici proxy/${scenario}`];
    const direct = runs[`direct (upstream)/${scenario}`];
    for (const variant of variants) {
      const mine = runs[`${variant.name}/${scenario}`];
      const vsProxy = summarise(mine, proxy);
      const vsDirect = summarise(mine, direct);
      summaries[`${variant.name}/${scenario}`] = {
        ...vsProxy,
        vsDirect: vsDirect.ratio,
        p99AddedVsDirect: vsDirect.p99Added,
      };
      const gateway = variant.name.startsWith('oncely');
      const target = TARGETS[scenario];
      const verdict = gateway ? (vsProxy.ratio >= target ? ` ✓ ≥${target}` : ` ✗ <${target}`) : '';
      rows.push([
        variant.name,
        scenario,
        `${fmt(vsProxy.rps, 0)}${vsProxy.spread > 0.1 ? ' ≈' : ''}`,
        variant === variants[1] ? '1.00 (baseline)' : `${fmt(vsProxy.ratio, 2)}${verdict}`,
        fmt(vsDirect.ratio, 2),
        fmt(vsProxy.p99, 2),
        variant === variants[0] ? '—' : fmt(vsDirect.p99Added, 2),
        variant === variants[1] ? '—' : fmt(vsProxy.p99Added, 2),
        fmt(vsProxy.cpuPerReq, 1),
        fmt(vsProxy.executionsPerReq, 2),
      ]);
    }
  }
  data = { info, flags, summaries, runs };
  sections.push(
    markdownTable(
      [
        'variant',
        'scenario',
        'req/s (median)',
        'ratio vs plain proxy',
        'ratio vs direct',
        'p99 ms',
        'p99 added vs direct, ms',
        'p99 added vs plain proxy, ms',
        'proxy CPU µs/req',
        'upstream runs/req',
      ],
      rows,
    ),
    '',
  );
} finally {
  await upstream.close();
  await admin.query(`DROP SCHEMA ${schema} CASCADE`).catch(() => {});
  await admin.end();
  rmSync(dir, { recursive: true, force: true });
}

const markdown = sections.join('\n');
const file = writeResults(flags.quick ? 'gateway.quick' : 'gateway', data, markdown);
console.log(`\n${markdown}\nwritten to ${file}`);
