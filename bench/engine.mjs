/**
 * The engine alone, no sockets: CPU per keyed request through `Engine.begin` and
 * `Execution.complete` with a MemoryStore, in this process. What oncely's decisions cost before any
 * adapter or socket work; compare with core.mjs's server CPU per request.
 *
 * Also what each request allocates (V8's sampling heap profiler, counting objects already
 * collected too: an estimate, within a few per cent at this sample count) and what a completed
 * record keeps alive in a MemoryStore (heap and external memory after full collections).
 *
 *   npm run build && node bench/engine.mjs [--quick]
 */
import { Session } from 'node:inspector/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Engine, MemoryStore } from '../dist/index.js';
import { REQUEST_BODY } from './lib/handler.mjs';
import { fmt, parseFlags } from './lib/harness.mjs';

const flags = parseFlags();
const N = flags.quick ? 20_000 : 100_000;
const body = new TextEncoder().encode(REQUEST_BODY);
const responseBody = new TextEncoder().encode(REQUEST_BODY.slice(0, 299));
let engine = new Engine({ store: new MemoryStore() });

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

/** The same request object and body read without the engine: what the loop itself allocates. */
async function bare(key) {
  await request(key).readBody();
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

/** Bytes allocated per call of `run`, less what `bare` allocates for the same keys. */
async function allocated(label, run, keyOf) {
  const session = new Session();
  session.connect();
  await session.post('HeapProfiler.enable');
  const sample = async (fn) => {
    await session.post('HeapProfiler.startSampling', {
      samplingInterval: 128,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    for (let i = 0; i < N; i++) await fn(keyOf(i));
    const { profile } = await session.post('HeapProfiler.stopSampling');
    let total = 0;
    const walk = (node) => {
      total += node.selfSize;
      for (const child of node.children) walk(child);
    };
    walk(profile.head);
    return total / N;
  };
  const loop = await sample(bare);
  const bytes = (await sample(run)) - loop;
  session.disconnect();
  console.log(`${label.padEnd(8)} ${fmt(bytes / 1024, 2)} KiB allocated per request by the engine and store`);
}

/** What one completed record keeps alive in a MemoryStore. */
async function retained() {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc');
  const store = new MemoryStore();
  const recording = new Engine({ store });
  const records = N;
  gc();
  gc();
  const before = process.memoryUsage();
  for (let i = 0; i < records; i++) {
    const decision = await recording.begin(request(`retained-${i}-${Math.random().toString(36).slice(2)}`));
    // A fresh body per record, as an adapter hands over; 299 bytes.
    await decision.execution.complete({
      status: 201,
      headers: { 'content-type': 'application/json; charset=utf-8' },
      body: Buffer.from(REQUEST_BODY.slice(0, 299)),
    });
  }
  gc();
  gc();
  const after = process.memoryUsage();
  const heap = (after.heapUsed - before.heapUsed) / records;
  const external = (after.external - before.external) / records;
  console.log(
    `record   ${fmt(heap, 0)} B of heap and ${fmt(external, 0)} B outside it (the body included) per completed record, over ${records} records`,
  );
  await store.close();
}

for (let i = 0; i < 20_000; i++) await one(`warmup-${i}-key`); // JIT
await time('new key', (i) => `newkey-${i}-abcdef`);
await time('replay', (i) => `newkey-${i % 100}-abcdef`);
await time('no key', () => undefined);
// A store bounded by maxRecords, full after the first 10 000 keys: every new key then evicts one.
const unbounded = engine;
engine = new Engine({ store: new MemoryStore({ maxRecords: 10_000 }) });
for (let i = 0; i < 20_000; i++) await one(`bounded-warmup-${i}`);
await time('new key, maxRecords 10 000', (i) => `bounded-${i}-abcdef`);
await engine.close();
engine = unbounded;
await allocated('new key', one, (i) => `alloc-${i}-abcdef`);
await allocated('replay', one, (i) => `newkey-${i % 100}-abcdef`);
await retained();
process.exit(0);
