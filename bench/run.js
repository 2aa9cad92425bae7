/**
 * Runs every benchmark, one after the other (never two at once: they would measure each other).
 *
 *   npm run bench                       # from the repo root: build, then every benchmark in full
 *   npm run bench -- --quick            # sanity run: 2 rounds × 2 s, smaller tables
 *   node bench/run.js core gateway      # only these; flags are passed on (--rounds=N --duration=S …)
 *   node bench/run.js --no-build        # skip `npm run build` (benchmarks import ../dist)
 *
 * Needs `npm install --prefix bench` once (autocannon and the peers live in bench/package.json),
 * Redis and PostgreSQL on loopback for stores and gateway. Results: bench/results/*.md and *.json.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const all = ['core', 'stores', 'frameworks', 'gateway'];
const args = process.argv.slice(2);
const names = args.filter((a) => all.includes(a));
const flags = args.filter((a) => a.startsWith('--') && a !== '--no-build');
const chosen = names.length > 0 ? names : all;

if (!existsSync(join(here, 'node_modules', 'autocannon'))) {
  console.error('bench/node_modules is missing: run `npm install --prefix bench` first.');
  process.exit(1);
}
if (!args.includes('--no-build')) {
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: 'inherit' });
}

const quick = flags.includes('--quick');
const parts = [];
let failed = false;
for (const name of chosen) {
  console.log(`\n=== ${name} ${flags.join(' ')}`);
  const result = spawnSync(process.execPath, [join(here, `${name}.mjs`), ...flags], { stdio: 'inherit' });
  if (result.status !== 0) {
    failed = true;
    console.error(`${name} failed (exit ${result.status})`);
    continue;
  }
  parts.push(readFileSync(join(here, 'results', `${name}${quick ? '.quick' : ''}.md`), 'utf8'));
}
const summary = join(here, 'results', quick ? 'summary.quick.md' : 'summary.md');
writeFileSync(summary, parts.join('\n'));
console.log(`\nall tables: ${summary}`);
process.exit(failed ? 1 : 0);
