/**
 * The engine alone, no sockets: CPU per keyed request through `Engine.begin` and
 * `Execution.complete` with a MemoryStore, in this process. What oncely's decisions cost before any
 * adapter or socket work; compare with core.mjs's server CPU per request.
 *
 *   npm run build && node bench/engine.mjs [--quick]
 */
import { Engine, MemoryStore } from '../dist/index.js';
import { REQUEST_BODY } from './lib/handler.mjs';
import { fmt, parseFlags } from './lib/harness.mjs';

const flags = parseFlags();
const N = flags.quick ? 20_000 : 100_000;
const body = new TextEncoder().encode(REQUEST_BODY);
const responseBody = new TextEncoder().encode(REQUEST_BODY.slice(0, 299));
const engine = new Engine({ store: new MemoryStore() });

function request(key) {
  const headers = { 'idempotency-key': key, 'content-type': 'application/json' };
  return {
    method: 'POST',
    url: '/orders',
    header: (name) => headers[name],
    readBody: async () => body,
    raw: null,
  };
}

async function one(key) {
  const decision = await engine.begin(request(key));
  if (decision.action === 'execute') {
    await decision.execution.complete({
      status: 201,
      headers: { 'content-type': 'application/json' },
      body: responseBody,
    });
  }
}

async function time(label, keyOf) {
  const cpu = process.cpuUsage();
  const started = performance.now();
  for (let i = 0; i < N; i++) await one(keyOf(i));
  const used = process.cpuUsage(cpu);
  const wall = performance.now() - started;
  console.log(
    `${label.padEnd(8)} ${fmt((used.user + used.system) / N, 1)} µs CPU per request, ${fmt((wall * 1000) / N, 1)} µs wall`,
  );
}

for (let i = 0; i < 20_000; i++) await one(`warmup-${i}-key`); // JIT
await time('new key', (i) => `newkey-${i}-abcdef`);
await time('replay', (i) => `newkey-${i % 100}-abcdef`);
await time('no key', () => undefined);
process.exit(0);
