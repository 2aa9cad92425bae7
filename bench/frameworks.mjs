/**
 * Framework benchmark: Express 5, Fastify 5 and Hono (on @hono/node-server), each bare, with
 * oncely (MemoryStore), and with the peers that fit it (express-idempotency; @node-idempotency/core
 * with its memory adapter), for new keys, replays of 100 warm keys and unkeyed requests.
 * Ratios are against the same framework's baseline in the same round.
 *
 *   npm run build && node bench/frameworks.mjs [--quick] [--only=express,fastify,hono] [--rounds=N] [--duration=S]
 */
import {
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

const flags = parseFlags(process.argv.slice(2), { duration: 3 });
const info = machine();
const scenarios = ['new', 'replay', 'nokey'];
const frameworks = {
  express: ['none', 'oncely', 'express-idempotency', 'node-idempotency'],
  fastify: ['none', 'oncely', 'node-idempotency'],
  hono: ['none', 'oncely'],
};
const label = {
  express: 'Express 5',
  fastify: 'Fastify 5',
  hono: 'Hono (node-server)',
  none: 'baseline',
  oncely: '+ oncely',
  'express-idempotency': '+ express-idempotency',
  'node-idempotency': '+ @node-idempotency/core',
};

const sections = [header('Frameworks: baseline vs oncely vs peers (memory stores)', flags, info)];
const data = { info, flags, results: {} };
for (const framework of flags.only ?? Object.keys(frameworks)) {
  const variants = frameworks[framework].map((layer) => ({
    name: `${label[framework]} ${label[layer]}`,
    script: 'framework.mjs',
    config: { framework, layer },
  }));
  console.log(
    `frameworks/${framework}: ${flags.rounds} rounds × ${flags.duration} s, load average ${info.loadAverage}`,
  );
  const runs = await runRounds(variants, scenarios, flags);
  const rows = [];
  const summaries = {};
  for (const scenario of scenarios) {
    for (const variant of variants) {
      const s = summarise(
        runs[`${variant.name}/${scenario}`],
        variant === variants[0] ? undefined : runs[`${variants[0].name}/${scenario}`],
      );
      summaries[`${variant.name}/${scenario}`] = s;
      rows.push(summaryRow(variant.name, scenario, s));
    }
  }
  data.results[framework] = { summaries, runs };
  sections.push(`### ${label[framework]}`, '', markdownTable(SUMMARY_HEADER, rows), '');
}
const markdown = sections.join('\n');
const file = writeResults(flags.quick ? 'frameworks.quick' : 'frameworks', data, markdown);
console.log(`\n${markdown}\nwritten to ${file}`);
