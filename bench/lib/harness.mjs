/**
 * The parent side of every benchmark: start one server at a time in a child process, drive it with
 * autocannon from this process, measure the child's CPU over exactly the load window, alternate
 * variants round by round, and summarise with medians and same-round ratios.
 */
import { fork, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { PATH, REQUEST_BODY } from './handler.mjs';

export const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Command-line flags shared by every benchmark. */
/**
 * @param defaults.duration seconds of measured load per run in a full run (default 5); benchmarks
 *   with many variants choose less so the whole benchmark stays within minutes
 * @param defaults.rounds rounds in a full run (default 5)
 */
export function parseFlags(argv = process.argv.slice(2), defaults = {}) {
  const flags = {
    quick: argv.includes('--quick'),
    rounds: undefined,
    duration: undefined,
    connections: 10,
    only: undefined,
    scenarios: undefined,
    profile: argv.includes('--profile'),
    pin: !argv.includes('--no-pin'),
  };
  for (const arg of argv) {
    const [name, value] = arg.split('=');
    if (name === '--rounds') flags.rounds = Number(value);
    else if (name === '--duration') flags.duration = Number(value);
    else if (name === '--connections') flags.connections = Number(value);
    else if (name === '--only') flags.only = value.split(',');
    else if (name === '--scenarios') flags.scenarios = value.split(',');
    else if (name === '--seed') flags.seed = Number(value);
  }
  flags.rounds ??= flags.quick ? 2 : (defaults.rounds ?? 5);
  flags.duration ??= flags.quick ? 2 : (defaults.duration ?? 5); // seconds of measured load per run
  flags.warmup = flags.quick ? 0.5 : 1; // seconds of unmeasured load before each run (JIT, pools)
  return flags;
}

let serverCpu;

/**
 * Pin this process (the load generator) to CPU 0 and every server started after it to CPU 1, so
 * the two never take turns on one core: on a 2-core machine that is most of the run-to-run noise.
 * Returns a description for the report, or undefined when pinning is off or impossible.
 */
export function pinCpus(flags) {
  if (!flags.pin || os.cpus().length < 2) return undefined;
  if (spawnSync('taskset', ['-pc', '0', String(process.pid)], { stdio: 'ignore' }).status !== 0)
    return undefined;
  serverCpu = String(os.cpus().length - 1);
  return `load generator pinned to CPU 0, server to CPU ${serverCpu} (taskset)`;
}

/** A server in a child process (see lib/child.mjs for its side of the protocol). */
export async function startServer(script, config = {}, { execArgv = [], env = {} } = {}) {
  const child = fork(join(BENCH_DIR, 'servers', script), [], {
    env: { ...process.env, ...env, BENCH_CONFIG: JSON.stringify(config) },
    execArgv,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  if (serverCpu !== undefined)
    spawnSync('taskset', ['-pc', serverCpu, String(child.pid)], { stdio: 'ignore' });
  let ready;
  const pending = new Map();
  let nextId = 0;
  const readyOrFailed = new Promise((resolve) => {
    ready = resolve;
  });
  child.on('message', (message) => {
    if (message.id === undefined) ready(message);
    else pending.get(message.id)?.(message);
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const first = await Promise.race([
    readyOrFailed,
    exited.then((code) => ({ type: 'failed', error: `exit ${code}` })),
  ]);
  if (first.type !== 'ready') throw new Error(`${script} did not start: ${first.error}`);
  const ask = async (message) => {
    const id = nextId++;
    const answer = new Promise((resolve) => pending.set(id, resolve));
    child.send({ ...message, id });
    const reply = await answer;
    pending.delete(id);
    if (reply.type === 'error') throw new Error(`${script}: ${reply.error}`);
    return reply;
  };
  return {
    url: `http://127.0.0.1:${first.port}`,
    port: first.port,
    pid: child.pid,
    start: () => child.send({ type: 'start' }),
    stop: () => ask({ type: 'stop' }),
    call: async (name, ...args) => (await ask({ type: 'call', name, args })).value,
    async close() {
      child.send({ type: 'close' });
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Keys unique across runs, rounds and processes: a random prefix and a counter. */
export function keyPrefix() {
  return `b${randomBytes(6).toString('hex')}`;
}

/** The 100 warm keys of a replay scenario, and a request to make each one warm. */
export function warmKeyList(prefix, count = 100) {
  return Array.from({ length: count }, (_, i) => `${prefix}w${i.toString().padStart(3, '0')}`);
}

/** Complete one keyed request per key, so later requests with them are replays. */
export async function warmKeys(url, keys, path = PATH) {
  for (const key of keys) {
    const response = await fetch(url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': key },
      body: REQUEST_BODY,
    });
    await response.arrayBuffer();
    if (response.status !== 201) throw new Error(`warming ${key}: status ${response.status}`);
  }
  // Report whether the same key again comes back marked as a replay (oncely, @node-idempotency);
  // the handler counter over the window is the check that holds for every variant.
  const again = await fetch(url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': keys[0] },
    body: REQUEST_BODY,
  });
  await again.arrayBuffer();
  if (again.status !== 201) throw new Error(`replaying ${keys[0]}: status ${again.status}`);
  return again.headers.get('idempotent-replayed') === 'true';
}

/**
 * One autocannon run. `scenario`: 'new' (a fresh key per request), 'replay' (cycle `keys`),
 * 'nokey'. Latencies are recorded per response at sub-millisecond resolution (autocannon's own
 * histogram keeps whole milliseconds).
 */
export async function load(url, { scenario, prefix, keys, duration, connections, path = PATH }) {
  const headers = { 'content-type': 'application/json' };
  const request = { method: 'POST', path, headers, body: REQUEST_BODY };
  if (scenario === 'new') {
    let n = 0;
    request.setupRequest = (req) => {
      req.headers = withKey(headers, `${prefix}n${(n++).toString(36)}`);
      return req;
    };
  } else if (scenario === 'replay') {
    let n = 0;
    request.setupRequest = (req) => {
      req.headers = withKey(headers, keys[n++ % keys.length]);
      return req;
    };
  }
  const latencies = [];
  const instance = autocannon({
    url,
    connections,
    duration,
    requests: [request],
  });
  instance.on('response', (_client, _status, _bytes, ms) => latencies.push(ms));
  const result = await instance;
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
  const statuses = {};
  for (const [code, { count }] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = count;
  return {
    total: latencies.length,
    rps: latencies.length / duration,
    p50: at(0.5),
    p99: at(0.99),
    p999: at(0.999),
    max: latencies.at(-1) ?? NaN,
    mean: latencies.reduce((sum, ms) => sum + ms, 0) / latencies.length,
    statuses,
    errors: result.errors,
    timeouts: result.timeouts,
  };
}

/** The request's headers plus a key. Not `{ ...headers, key }`: V8 builds that on a slow path, on the load generator's CPU. */
function withKey(headers, key) {
  const keyed = Object.assign({}, headers);
  keyed['idempotency-key'] = key;
  return keyed;
}

/**
 * Warm up, then measure one scenario against a running server: autocannon's figures plus the
 * server's CPU per request and its handler executions over exactly the window.
 */
export async function measure(server, options, flags) {
  if (flags.warmup > 0) {
    await load(server.url, {
      ...options,
      prefix: `${options.prefix}x`,
      duration: flags.warmup,
      connections: flags.connections,
    });
  }
  const observer = options.observer;
  server.start();
  observer?.start();
  const run = await load(server.url, {
    ...options,
    duration: flags.duration,
    connections: flags.connections,
  });
  const used = await server.stop();
  if (observer) {
    // The upstream behind a proxy: its CPU and handler executions over the same window.
    const behind = await observer.stop();
    run.upstreamCpuPerReq = behind.cpuMicros / Math.max(1, run.total);
    run.upstreamExecutions = behind.executions;
  }
  run.cpuPerReq = used.cpuMicros / Math.max(1, run.total);
  run.userCpuPerReq = used.userMicros / Math.max(1, run.total);
  run.gcPerReq = (used.gcMicros ?? 0) / Math.max(1, run.total);
  run.cpuMicros = used.cpuMicros;
  run.executions = used.executions;
  const expected = options.status ?? 201;
  const bad = run.total - (run.statuses[expected] ?? 0);
  run.bad = bad;
  if (bad > 0 || run.errors > 0) {
    console.error(
      `  ! ${bad} responses other than ${expected} (${JSON.stringify(run.statuses)}), ${run.errors} errors`,
    );
  }
  return run;
}

export function median(values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Rotate the order of variants each round, so no variant always runs first or last. */
export function rotated(list, round) {
  const k = round % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

/**
 * A random order of `list` from `random` (Fisher–Yates). Rotation keeps every variant behind the
 * same neighbour in every round, so whatever a run leaves behind (a server still collecting garbage
 * on the shared CPU) always lands on the same next variant; a shuffle spreads it over all of them.
 */
export function shuffled(list, random) {
  const out = [...list];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** A seeded PRNG (mulberry32): the same seed gives the same run orders. */
export function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Run every variant × scenario for `flags.rounds` rounds, one server at a time (a fresh server per
 * variant per round), and return raw runs keyed `variant/scenario`.
 * variants: [{ name, script, config, scenarios: [...], prepare?(server, scenario) }]
 */
export async function runRounds(variants, scenarios, flags, log = console.log) {
  const runs = {};
  for (let round = 0; round < flags.rounds; round++) {
    log(`round ${round + 1}/${flags.rounds}`);
    for (const variant of rotated(variants, round)) {
      const server = await startServer(variant.script, variant.config, variant.spawn);
      try {
        for (const scenario of variant.scenarios ?? scenarios) {
          const prefix = keyPrefix();
          const keys = warmKeyList(prefix);
          if (scenario === 'replay') await warmKeys(server.url, keys, variant.path);
          const run = await measure(
            server,
            { scenario, prefix, keys, path: variant.path, observer: variant.observer },
            flags,
          );
          (runs[`${variant.name}/${scenario}`] ??= []).push(run);
          log(runLine(variant, scenario, run));
        }
      } finally {
        await server.close();
      }
    }
  }
  return runs;
}

/** One run's progress line. */
function runLine(variant, scenario, run) {
  const executions = run.upstreamExecutions ?? run.executions;
  return `  ${variant.name.padEnd(34)} ${scenario.padEnd(7)} ${fmt(run.rps, 0).padStart(7)} req/s  p99 ${fmt(run.p99, 2)} ms  cpu ${fmt(run.cpuPerReq, 1)} µs/req (gc ${fmt(run.gcPerReq, 1)})  handler ran ${executions}×`;
}

/**
 * Like {@link runRounds}, but every variant's server stays up for the whole benchmark and the
 * variants take turns scenario by scenario: in each round, one short run of each variant on the
 * same scenario, back to back, in an order shuffled every round (see shuffled). A variant's run
 * and its baseline's are then seconds apart, not minutes, so a drift in what the machine gives the
 * benchmark (a shared 2-core VM's steal, its clock) hits both alike, and the median of the
 * per-round ratios cancels it. Each
 * server is warmed once per scenario before the first round (flags.warmup × 3); idle servers
 * cost nothing.
 */
export async function runInterleaved(variants, scenarios, flags, log = console.log) {
  const servers = new Map();
  const runs = {};
  try {
    for (const variant of variants) {
      servers.set(variant, await startServer(variant.script, variant.config, variant.spawn));
    }
    const warmKeysOf = new Map();
    for (const variant of variants) {
      const server = servers.get(variant);
      for (const scenario of variant.scenarios ?? scenarios) {
        const prefix = keyPrefix();
        if (scenario === 'replay') {
          const keys = warmKeyList(prefix);
          await warmKeys(server.url, keys, variant.path);
          warmKeysOf.set(variant, keys);
        }
        await load(server.url, {
          scenario,
          prefix: `${prefix}x`,
          keys: warmKeysOf.get(variant),
          path: variant.path,
          duration: flags.warmup * 3,
          connections: flags.connections,
        });
      }
    }
    const once = { ...flags, warmup: 0 };
    const random = seededRandom(flags.seed ?? 1);
    for (let round = 0; round < flags.rounds; round++) {
      log(`round ${round + 1}/${flags.rounds}`);
      for (const scenario of scenarios) {
        for (const variant of shuffled(variants, random)) {
          if (!(variant.scenarios ?? scenarios).includes(scenario)) continue;
          const server = servers.get(variant);
          const run = await measure(
            server,
            { scenario, prefix: keyPrefix(), keys: warmKeysOf.get(variant), path: variant.path },
            once,
          );
          (runs[`${variant.name}/${scenario}`] ??= []).push(run);
          log(runLine(variant, scenario, run));
        }
      }
    }
  } finally {
    for (const server of servers.values()) await server.close();
  }
  return runs;
}

/** Medians of a list of runs, and the median of per-round ratios against a baseline's runs. */
export function summarise(runs, baseline) {
  const out = {
    rounds: runs.length,
    rps: median(runs.map((r) => r.rps)),
    p50: median(runs.map((r) => r.p50)),
    p99: median(runs.map((r) => r.p99)),
    cpuPerReq: median(runs.map((r) => r.cpuPerReq)),
    userCpuPerReq: median(runs.map((r) => r.userCpuPerReq)),
    executionsPerReq: median(runs.map((r) => (r.upstreamExecutions ?? r.executions) / Math.max(1, r.total))),
    upstreamCpuPerReq: median(runs.map((r) => r.upstreamCpuPerReq)),
    bad: runs.reduce((sum, r) => sum + r.bad + r.errors, 0),
    spread: spread(runs.map((r) => r.rps)),
  };
  if (baseline) {
    const n = Math.min(runs.length, baseline.length);
    out.ratio = median(Array.from({ length: n }, (_, i) => runs[i].rps / baseline[i].rps));
    out.cpuRatio = median(Array.from({ length: n }, (_, i) => runs[i].cpuPerReq / baseline[i].cpuPerReq));
    out.p99Added = median(Array.from({ length: n }, (_, i) => runs[i].p99 - baseline[i].p99));
  }
  return out;
}

/** (max - min) / median of req/s across rounds: above ~10 % the figure is marked noisy. */
function spread(values) {
  const m = median(values);
  return (Math.max(...values) - Math.min(...values)) / m;
}

export function fmt(value, digits = 1) {
  return Number.isFinite(value) ? value.toFixed(digits) : '—';
}

export function markdownTable(header, rows) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

/** A row of the standard table for one variant/scenario summary. */
export function summaryRow(label, scenario, s, target) {
  const noisy = s.spread > 0.1 ? ' ≈' : '';
  const ratio = s.ratio === undefined ? '1.00 (baseline)' : fmt(s.ratio, 2);
  const verdict =
    target === undefined || s.ratio === undefined
      ? ''
      : s.ratio >= target
        ? ` ✓ ≥${target}`
        : ` ✗ <${target}`;
  return [
    label,
    scenario,
    `${fmt(s.rps, 0)}${noisy}`,
    `${ratio}${verdict}`,
    fmt(s.p99, 2),
    fmt(s.cpuPerReq, 1),
    s.cpuRatio === undefined ? '—' : fmt(s.cpuRatio, 2),
    fmt(s.executionsPerReq, 2),
  ];
}

export const SUMMARY_HEADER = [
  'variant',
  'scenario',
  'req/s (median)',
  'ratio vs baseline',
  'p99 ms',
  'server CPU µs/req',
  'CPU ratio',
  'handler runs/req',
];

/** What the figures were taken on and under. */
export function machine() {
  const load = os.loadavg();
  return {
    date: new Date().toISOString(),
    node: process.version,
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    os: `${os.type()} ${os.release()}`,
    loadAverage: load.map((v) => v.toFixed(2)).join(' '),
    underLoad: load[0] > 1.5,
  };
}

/** Write a benchmark's raw runs, summaries and markdown under bench/results/. */
export function writeResults(name, data, markdown) {
  const dir = join(BENCH_DIR, 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${name}.json`), `${JSON.stringify(data, null, 2)}\n`);
  writeFileSync(join(dir, `${name}.md`), `${markdown}\n`);
  return join(dir, `${name}.md`);
}

export function header(title, flags, info) {
  return [
    `## ${title}`,
    '',
    `${info.date} · Node ${info.node} · ${info.cpus} · ${info.memory} · load average at start ${info.loadAverage}${info.underLoad ? ' (**taken under load: machine shared, figures noisy**)' : ''}`,
    ...(info.pinned ? [`${info.pinned}.`] : []),
    `${flags.rounds} rounds × ${flags.duration} s per run${flags.schedule ? '' : ` (+${flags.warmup} s warm-up)`}, ${flags.connections} connections, ${flags.schedule ?? 'variants alternated round by round'}; medians; ratios are medians of same-round ratios. ≈ marks req/s whose spread across rounds exceeds 10 %.`,
    '',
  ].join('\n');
}
