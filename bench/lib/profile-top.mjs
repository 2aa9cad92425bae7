/**
 * Summarise `.cpuprofile` files (from `node bench/core.mjs --profile`): self time per function and
 * inclusive time per oncely function, as a share of the profile.
 *
 *   node bench/lib/profile-top.mjs bench/results/profiles/*.cpuprofile [--top=25]
 */
import { readFileSync } from 'node:fs';

const files = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const topArg = process.argv.find((a) => a.startsWith('--top='));
const top = topArg ? Number(topArg.split('=')[1]) : 25;

for (const file of files) {
  const profile = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const self = new Map();
  const parent = new Map();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const counts = new Map();
  for (const id of profile.samples) counts.set(id, (counts.get(id) ?? 0) + 1);
  const total = profile.samples.length;
  const name = (node) => {
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url
      ? `${url.replace(/^.*\/(dist|node_modules|bench)\//, '$1/').replace(/^node:/, '')}:${lineNumber + 1}`
      : '';
    return `${functionName || '(anonymous)'} ${where}`.trim();
  };
  const inclusive = new Map();
  for (const [id, count] of counts) {
    const key = name(byId.get(id));
    self.set(key, (self.get(key) ?? 0) + count);
    // Inclusive: every distinct frame on the stack gets the sample once.
    const seen = new Set();
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const frame = name(byId.get(at));
      if (seen.has(frame)) continue;
      seen.add(frame);
      inclusive.set(frame, (inclusive.get(frame) ?? 0) + count);
    }
  }
  const pct = (n) => `${((100 * n) / total).toFixed(1).padStart(5)} %`;
  console.log(`\n${file}: ${total} samples`);
  console.log('  self time');
  for (const [key, n] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`  ${pct(n)}  ${key}`);
  console.log('  inclusive time, oncely (dist/) frames');
  for (const [key, n] of [...inclusive]
    .filter(([key]) => key.includes('dist/'))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top))
    console.log(`  ${pct(n)}  ${key}`);
}
