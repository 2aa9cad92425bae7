/**
 * Framework benchmark: Express 5, Fastify 5 and Hono (on @hono/node-server), each bare, with
 * oncely (MemoryStore), and with the peers that fit it (express-idempotency; @node-idempotency/core
 * with its memory adapter), for new keys, replays of 100 warm keys and unkeyed requests.
 * Ratios are against the same framework's baseline in the same round.
 *
 *   npm run build && node bench/frameworks.mjs [--quick] [--only=express,fastify,hono] [--rounds=N] [--duration=S]
 *     [--scenarios=new,replay,nokey] [--profile] [--compare=/abs/other/dist[,/abs/third/dist…]] [--aa] [--no-pin] [--seed=N]
 *     [--layers=none,oncely,…]
 *
 * `--compare` adds a variant running oncely from another build (a worktree of an earlier commit,
 * say), measured in the same rounds: an A/B of a change on the same machine at the same moment.
 * `--aa` adds the baseline a second time as a variant: its ratio is the noise floor of the run.
 * Servers are pinned to one CPU and the load generator to the other (`--no-pin` turns that off).
 *
 * `--profile` runs every server under `node --cpu-prof` (profiles in bench/results/profiles/<framework>-<layer>/;
 * summarise them with `node bench/lib/profile-top.mjs <file>`).
 */
import { join } from 'node:path';
import {
  BENCH_DIR,
  fmt,
  header,
  machine,
  markdownTable,
  parseFlags,
  pinCpus,
  runInterleaved,
  SUMMARY_HEADER,
  summarise,
  summaryRow,
  writeResults,
} from './lib/harness.mjs';

const flags = parseFlags(process.argv.slice(2), { duration: 2, rounds: 10 });
flags.schedule = `all servers up at once, each warmed ${flags.warmup * 3} s per scenario before the first round, then every round runs every variant on a scenario back to back, in an order shuffled every round (seed ${flags.seed ?? 1})`;
const info = { ...machine(), pinned: pinCpus(flags) };
const aa = process.argv.includes('--aa');
const only = process.argv
  .find((arg) => arg.startsWith('--layers='))
  ?.slice('--layers='.length)
  .split(',');
const compare = process.argv
  .find((arg) => arg.startsWith('--compare='))
  ?.slice('--compare='.length)
  .split(',');
const scenarios = flags.scenarios ?? ['new', 'replay', 'nokey'];
const frameworks = {
  express: ['none', 'noop', 'oncely', 'express-idempotency', 'node-idempotency'],
  fastify: ['none', 'noop', 'oncely', 'node-idempotency'],
  hono: ['none', 'noop', 'oncely'],
};
const label = {
  express: 'Express 5',
  fastify: 'Fastify 5',
  hono: 'Hono (node-server)',
  none: 'baseline',
  noop: '+ no-op middleware (control)',
  oncely: '+ oncely',
  'none-again': 'baseline again (A/A)',
  'express-idempotency': '+ express-idempotency',
  'node-idempotency': '+ @node-idempotency/core',
};

// Issue 4's targets for oncely, as ratios to the framework's baseline (new keys: 1.5× the best peer
// as measured when the issue was filed, ≈ 0.9× Express, ≈ 0.75× Fastify; Hono has no peer).
const targets = {
  express: { new: 0.9, replay: 1.0, nokey: 0.97 },
  fastify: { new: 0.75, replay: 1.0, nokey: 0.97 },
  hono: { replay: 1.0, nokey: 0.97 },
};

const sections = [header('Frameworks: baseline vs oncely vs peers (memory stores)', flags, info)];
const data = { info, flags, results: {} };
for (const framework of flags.only ?? Object.keys(frameworks)) {
  const layers = frameworks[framework].filter((layer) => only === undefined || only.includes(layer));
  // One variant per --compare build, right after this checkout's oncely.
  if (compare) layers.splice(layers.indexOf('oncely') + 1, 0, ...compare.map((_, i) => `compare-${i}`));
  // An A/A control: the baseline again, as a variant. Its ratio shows the noise floor of the run.
  if (aa) layers.splice(1, 0, 'none-again');
  const compared = (layer) => compare?.[Number(layer.slice('compare-'.length))];
  const variants = layers.map((layer) => ({
    name: `${label[framework]} ${layer.startsWith('compare-') ? `+ oncely from ${compared(layer)}` : label[layer]}`,
    script: 'framework.mjs',
    config: layer.startsWith('compare-')
      ? { framework, layer: 'oncely', dist: compared(layer) }
      : { framework, layer: layer === 'none-again' ? 'none' : layer },
    spawn: flags.profile
      ? {
          execArgv: [
            '--cpu-prof',
            `--cpu-prof-dir=${join(BENCH_DIR, 'results', 'profiles', `${framework}-${layer}`)}`,
          ],
        }
      : undefined,
  }));
  console.log(
    `frameworks/${framework}: ${flags.rounds} rounds × ${flags.duration} s, load average ${info.loadAverage}`,
  );
  const runs = await runInterleaved(variants, scenarios, flags);
  const rows = [];
  const summaries = {};
  for (const scenario of scenarios) {
    for (const variant of variants) {
      const s = summarise(
        runs[`${variant.name}/${scenario}`],
        variant === variants[0] ? undefined : runs[`${variants[0].name}/${scenario}`],
      );
      summaries[`${variant.name}/${scenario}`] = s;
      const target =
        variant.config.layer === 'oncely' && !variant.config.dist ? targets[framework][scenario] : undefined;
      rows.push([...summaryRow(variant.name, scenario, s, target), fmt(s.userCpuPerReq, 1)]);
    }
  }
  data.results[framework] = { summaries, runs };
  sections.push(
    `### ${label[framework]}`,
    '',
    markdownTable([...SUMMARY_HEADER, 'of which user µs/req'], rows),
    '',
  );
}
const markdown = sections.join('\n');
const file = writeResults(flags.quick ? 'frameworks.quick' : 'frameworks', data, markdown);
console.log(`\n${markdown}\nwritten to ${file}`);
