/**
 * Hot-spot hunt for the core path: the bare handler, then the same with one more piece of what
 * oncely/node does per request, each measured like core.mjs (server CPU µs per request, req/s),
 * alternated round by round. Steps: bare → bareBuffer (response body as bytes after writeHead, as
 * writeResponse does) → iterate (oncely's body reader and re-arm, answer from
 * those bytes) → rearm (+ the handler reads the re-armed body) (+ read the body with oncely's reader and re-arm it) → capture
 * (+ captureResponse with a no-op execution) → oncely (the whole thing; SCENARIO=new|replay, default new) → oncelyNoTimer (the same
 * with Engine.callStore's per-call timeout bypassed).
 *
 *   npm run build && node bench/ablation.mjs [--rounds=N] [--duration=S] [--connections=C] [--only=bare,rearm,…]
 */
import { fmt, keyPrefix, measure, median, parseFlags, rotated, startServer } from './lib/harness.mjs';

const flags = parseFlags();
const steps = flags.only ?? ['bare', 'bareBuffer', 'iterate', 'rearm', 'capture', 'oncely', 'oncelyNoTimer'];
const results = Object.fromEntries(steps.map((s) => [s, []]));
for (let round = 0; round < flags.rounds; round++) {
  for (const variant of rotated(steps, round)) {
    const server = await startServer('ablation.mjs', { variant });
    const scenario = variant.startsWith('oncely') ? (process.env.SCENARIO ?? 'new') : 'nokey';
    const run = await measure(server, { scenario, prefix: keyPrefix() }, flags);
    results[variant].push(run);
    console.log(
      `  ${variant.padEnd(10)} ${fmt(run.rps, 0).padStart(6)} req/s  ${fmt(run.cpuPerReq, 1)} µs/req`,
    );
    await server.close();
  }
}
console.log('\nstep        req/s   CPU µs/req (medians)');
for (const step of steps) {
  const runs = results[step];
  console.log(
    `${step.padEnd(10)} ${fmt(median(runs.map((r) => r.rps)), 0).padStart(6)}   ${fmt(median(runs.map((r) => r.cpuPerReq)), 1)}`,
  );
}
