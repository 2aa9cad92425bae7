/**
 * Core benchmark: the bare node:http handler vs the same handler under `oncely/node`
 * withIdempotency + MemoryStore, for new keys, replays of 100 warm keys, and unkeyed requests.
 *
 *   npm run build && node bench/core.mjs [--quick] [--rounds=N] [--duration=S] [--connections=C] [--only=new,replay,nokey] [--profile]
 *
 * Targets (same-round ratios of req/s): new key ≥ 0.8×, replay ≥ 1.0×, no key ≥ 0.97× the bare handler.
 * `--profile` runs the oncely server under `node --cpu-prof` (profiles in bench/results/profiles/{bare,oncely}/; summarise them with
 * `node bench/lib/profile-top.mjs FILE…`).
 */
import { join } from 'node:path';
import {
  BENCH_DIR,
  header,
  machine,
  markdownTable,
  parseFlags,
  runRounds,
  SUMMARY_HEADER,
  summarise,
  summaryRow,
  writeResults,
} from './lib/harness.mjs';

const flags = parseFlags();
const info = machine();
const scenarios = flags.only ?? ['new', 'replay', 'nokey'];
const TARGETS = { new: 0.8, replay: 1.0, nokey: 0.97 };
const profileDir = join(BENCH_DIR, 'results', 'profiles');
const variants = [
  {
    name: 'bare node:http',
    script: 'core.mjs',
    config: { variant: 'bare' },
    spawn: flags.profile
      ? { execArgv: ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, 'bare')}`] }
      : undefined,
  },
  {
    name: 'oncely/node + MemoryStore',
    script: 'core.mjs',
    config: { variant: 'oncely' },
    spawn: flags.profile
      ? { execArgv: ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, 'oncely')}`] }
      : undefined,
  },
];

console.log(`core: ${flags.rounds} rounds × ${flags.duration} s, load average ${info.loadAverage}`);
const runs = await runRounds(variants, scenarios, flags);
const rows = [];
const summaries = {};
for (const scenario of scenarios) {
  const base = runs[`bare node:http/${scenario}`];
  for (const variant of variants) {
    const mine = runs[`${variant.name}/${scenario}`];
    const s = summarise(mine, variant === variants[0] ? undefined : base);
    summaries[`${variant.name}/${scenario}`] = s;
    rows.push(summaryRow(variant.name, scenario, s, variant === variants[0] ? undefined : TARGETS[scenario]));
  }
}
const markdown = `${header('Core: node:http vs oncely/node (MemoryStore)', flags, info)}\n${markdownTable(SUMMARY_HEADER, rows)}\n`;
const file = writeResults(flags.quick ? 'core.quick' : 'core', { info, flags, summaries, runs }, markdown);
console.log(`\n${markdown}\nwritten to ${file}`);
