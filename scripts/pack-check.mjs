#!/usr/bin/env node
/**
 * @module scripts/pack-check: proves the published tarball works as users install it. It packs
 * oncely, installs the tarball into fresh projects outside the repository and checks that every
 * subpath type-checks (TypeScript, NodeNext, ESM and CommonJS sources), imports (ESM) and
 * `require()`s (CommonJS, Node >= 20.19 require(esm)), that a missing optional peer breaks only the
 * entries that wrap it, that the `oncely` bin starts, and that a keyed POST sent twice is replayed
 * through Express 4, Express 5 and Fastify. Then publint and attw (`--profile esm-only`) judge the
 * same tarball.
 *
 * Run after `npm run build`: `node scripts/pack-check.mjs [--keep]` (`--keep` leaves the temp dir).
 * Installs resolve from the npm cache first (`--prefer-offline`), pinned to the versions the repo
 * has installed, so a warm cache makes no downloads; install scripts are skipped (better-sqlite3's
 * would fetch a prebuilt binary from GitHub, and only its JavaScript is loaded here).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const keep = process.argv.includes('--keep');
const started = Date.now();

/**
 * The optional peers each subpath may load at runtime. An entry missing here fails the check, so a
 * new subpath cannot ship without someone deciding what it is allowed to pull in.
 */
const RUNTIME_PEERS = {
  oncely: [],
  'oncely/fetch': [],
  'oncely/node': [],
  'oncely/express': ['express'],
  'oncely/fastify': ['fastify'],
  'oncely/hono': ['hono'],
  'oncely/koa': ['koa'],
  'oncely/nestjs': ['@nestjs/common', '@nestjs/core', 'rxjs'],
  'oncely/sqlite': ['better-sqlite3'],
  'oncely/redis': ['ioredis', 'redis'],
  'oncely/postgres': ['pg', 'postgres'],
  'oncely/client': [],
  'oncely/testing': ['vitest'],
  // Its runtime packages (pino, prom-client, undici) are dependencies; store drivers load on demand.
  'oncely/gateway': [],
};

/** What the consumer projects install beside the tarball: every peer, their types, a compiler. */
const CONSUMER_PACKAGES = [
  'express',
  'fastify',
  'hono',
  '@hono/node-server',
  'koa',
  '@nestjs/common',
  '@nestjs/core',
  'reflect-metadata',
  'rxjs',
  'better-sqlite3',
  'ioredis',
  'redis',
  'pg',
  'postgres',
  'vitest',
  'typescript',
  '@types/node',
  '@types/express',
  '@types/koa',
  '@types/pg',
  '@types/better-sqlite3',
];

function log(message) {
  console.log(`pack-check: ${message}`);
}

function fail(message) {
  throw new Error(`pack-check: ${message}`);
}

/** The version the repo has installed, so the consumer install hits the npm cache. */
function installedVersion(dir) {
  const file = join(root, 'node_modules', dir, 'package.json');
  if (!existsSync(file)) fail(`node_modules/${dir} is missing; run npm ci first`);
  return JSON.parse(readFileSync(file, 'utf8')).version;
}

async function sh(command, args, cwd, options = {}) {
  try {
    return await run(command, args, {
      cwd,
      maxBuffer: 64 * 1024 * 1024,
      timeout: options.timeoutMs ?? 300_000,
      env: { ...process.env, ...options.env },
    });
  } catch (error) {
    if (options.allowFailure && typeof error.code === 'number') return error;
    const output = `${error.stdout ?? ''}${error.stderr ?? ''}`.trim();
    fail(`${command} ${args.join(' ')} failed in ${cwd}:\n${output || error.message}`);
  }
}

function write(dir, files) {
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
}

/** Subpaths as users write them, from package.json `exports`. */
function subpaths() {
  const names = Object.keys(pkg.exports)
    .filter((key) => key !== './package.json')
    .map((key) => (key === '.' ? 'oncely' : `oncely/${key.slice(2)}`));
  const unknown = names.filter((name) => !(name in RUNTIME_PEERS));
  if (unknown.length > 0) fail(`add ${unknown.join(', ')} to RUNTIME_PEERS in scripts/pack-check.mjs`);
  const gone = Object.keys(RUNTIME_PEERS).filter((name) => !names.includes(name));
  if (gone.length > 0) fail(`package.json exports no longer has ${gone.join(', ')}`);
  return names;
}

/** Every file `exports` and `bin` point at must be built; name the missing ones. */
function checkBuilt() {
  const targets = [pkg.bin.oncely];
  for (const value of Object.values(pkg.exports)) {
    if (typeof value === 'string') targets.push(value);
    else targets.push(value.types, value.default);
  }
  const missing = targets.filter((target) => !existsSync(join(root, target)));
  if (missing.length > 0) fail(`not built (run npm run build): ${missing.join(', ')}`);
}

async function pack(dir) {
  const { stdout } = await sh('npm', ['pack', '--json', '--pack-destination', dir], root);
  const [result] = JSON.parse(stdout);
  const files = result.files.map((file) => file.path);
  const tests = files.filter(
    (file) => /\.test\./.test(file) || file.startsWith('src/') || file.startsWith('test/'),
  );
  if (tests.length > 0) fail(`the tarball ships sources or tests: ${tests.join(', ')}`);
  for (const required of ['package.json', 'LICENSE', 'README.md']) {
    if (!files.includes(required)) fail(`the tarball has no ${required}`);
  }
  // A map pointing at sources the tarball lacks makes bundlers and debuggers warn (ENOENT src/...).
  const brokenMaps = files.filter((file) => {
    if (!file.endsWith('.js.map')) return false;
    const map = JSON.parse(readFileSync(join(root, file), 'utf8'));
    if (map.sourcesContent?.every((text) => typeof text === 'string')) return false;
    return !map.sources.every((source) => files.includes(join(dirname(file), source)));
  });
  if (brokenMaps.length > 0) {
    fail(
      `${brokenMaps.length} source maps name sources the tarball does not ship (e.g. ${brokenMaps[0]}); ` +
        'build with "inlineSources": true (see docs/packaging.md)',
    );
  }
  log(`packed ${result.filename}: ${files.length} files, ${Math.round(result.size / 1024)} kB`);
  return join(dir, result.filename);
}

// ---------------------------------------------------------------------------------------------
// The consumer projects
// ---------------------------------------------------------------------------------------------

/** Shared by the ESM and the CommonJS smoke tests: a keyed POST twice, the second one replayed. */
const REPLAY_CJS = `'use strict';
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { once } = require('node:events');

async function postTwice(label, url, runs) {
  const key = randomUUID();
  const send = () =>
    fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': key },
      body: JSON.stringify({ amount: 100 }),
    });
  const first = await send();
  const firstBody = await first.text();
  const second = await send();
  const secondBody = await second.text();
  assert.equal(first.status, 201, label + ': first status');
  assert.equal(first.headers.get('idempotent-replayed'), null, label + ': first is not a replay');
  assert.equal(second.status, 201, label + ': replayed status');
  assert.equal(second.headers.get('idempotent-replayed'), 'true', label + ': replay header');
  assert.equal(secondBody, firstBody, label + ': replayed body');
  assert.deepEqual(JSON.parse(firstBody), { run: 1, amount: 100 }, label + ': body');
  assert.equal(runs(), 1, label + ': the handler ran once');
}

async function expressReplay(label, express, idempotency, MemoryStore) {
  let runs = 0;
  const app = express();
  app.use(idempotency({ store: new MemoryStore() }));
  app.post('/payments', express.json(), (req, res) => {
    runs += 1;
    res.status(201).json({ run: runs, amount: req.body.amount });
  });
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    await postTwice(label, 'http://127.0.0.1:' + server.address().port + '/payments', () => runs);
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

async function fastifyReplay(label, Fastify, idempotency, MemoryStore) {
  let runs = 0;
  const app = Fastify();
  await app.register(idempotency, { store: new MemoryStore() });
  app.post('/payments', async (request, reply) => {
    runs += 1;
    return reply.code(201).send({ run: runs, amount: request.body.amount });
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  try {
    await postTwice(label, 'http://127.0.0.1:' + app.server.address().port + '/payments', () => runs);
  } finally {
    await app.close();
  }
}

module.exports = { expressReplay, fastifyReplay };
`;

function esmSmoke(names) {
  return `import assert from 'node:assert/strict';
import express4 from 'express4';
import express5 from 'express';
import Fastify from 'fastify';
import replay from './replay.cjs';

const names = ${JSON.stringify(names)};
const modules = {};
for (const name of names) modules[name] = await import(name);
for (const name of names) assert.ok(Object.keys(modules[name]).length > 0, name + ' exports something');

const { MemoryStore } = modules.oncely;
await replay.expressReplay('ESM Express 4', express4, modules['oncely/express'].idempotency, MemoryStore);
await replay.expressReplay('ESM Express 5', express5, modules['oncely/express'].idempotency, MemoryStore);
await replay.fastifyReplay('ESM Fastify 5', Fastify, modules['oncely/fastify'].idempotency, MemoryStore);
console.log('esm: imported ' + names.length + ' subpaths; Express 4, Express 5 and Fastify replayed');
`;
}

function cjsSmoke(names) {
  return `'use strict';
const assert = require('node:assert/strict');
const replay = require('./replay.cjs');

// Node >= 20.19 loads an ES module from require() when its graph has no top-level await.
const names = ${JSON.stringify(names)};
const modules = {};
for (const name of names) modules[name] = require(name);
for (const name of names) assert.ok(Object.keys(modules[name]).length > 0, name + ' exports something');

(async () => {
  const { MemoryStore } = require('oncely');
  const { idempotency: expressIdempotency } = require('oncely/express');
  const { idempotency: fastifyIdempotency } = require('oncely/fastify');
  await replay.expressReplay('CJS Express 4', require('express4'), expressIdempotency, MemoryStore);
  await replay.expressReplay('CJS Express 5', require('express'), expressIdempotency, MemoryStore);
  await replay.fastifyReplay('CJS Fastify 5', require('fastify'), fastifyIdempotency, MemoryStore);
  console.log('cjs: required ' + names.length + ' subpaths; Express 4, Express 5 and Fastify replayed');
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
`;
}

/** Without any optional peer: the core must load, and an entry may fail only for want of its own peer. */
function bareSmoke(runtimePeers) {
  return `import assert from 'node:assert/strict';

const runtimePeers = ${JSON.stringify(runtimePeers)};
const loaded = [];
const needPeer = [];
for (const [name, peers] of Object.entries(runtimePeers)) {
  try {
    await import(name);
    loaded.push(name);
  } catch (error) {
    assert.equal(error.code, 'ERR_MODULE_NOT_FOUND', name + ': ' + error.message);
    const missing = /Cannot find package '([^']+)'/.exec(error.message)?.[1];
    assert.ok(peers.includes(missing), name + ' needs ' + missing + ', which is not one of its peers ' + peers);
    needPeer.push(name + ' (' + missing + ')');
  }
}
assert.ok(loaded.includes('oncely'), 'the core entry loads with no peer installed');
console.log('bare: loaded without peers: ' + loaded.join(', '));
console.log('bare: need their peer: ' + needPeer.join(', '));

// The gateway from the installed package, its dependencies resolved from the registry.
const { createServer } = await import('node:http');
const { once } = await import('node:events');
const { startGateway } = await import('oncely/gateway');
let runs = 0;
const upstream = createServer((req, res) => {
  req.resume().on('end', () => {
    runs += 1;
    res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ run: runs }));
  });
});
upstream.listen(0, '127.0.0.1');
await once(upstream, 'listening');
const gateway = await startGateway(
  { upstream: 'http://127.0.0.1:' + upstream.address().port, store: 'memory:' },
  { logDestination: { write() {} } },
);
try {
  const send = () => fetch(gateway.url + '/payments', { method: 'POST', headers: { 'idempotency-key': 'pack-check-1' }, body: '{}' });
  const first = await send();
  const firstBody = await first.text();
  const second = await send();
  assert.equal(first.status, 201);
  assert.equal(second.headers.get('idempotent-replayed'), 'true', 'the gateway replays');
  assert.equal(await second.text(), firstBody);
  assert.equal(runs, 1, 'the upstream ran once');
} finally {
  await gateway.close();
  upstream.closeAllConnections();
  upstream.close();
}
console.log('bare: oncely/gateway replayed a keyed POST with only its dependencies installed');
`;
}

/** Type-level use of every subpath against the real framework and driver types. */
const CONSUMER_TS = `import express from 'express';
import Fastify from 'fastify';
import { Hono } from 'hono';
import { Redis } from 'ioredis';
import Koa from 'koa';
import pg from 'pg';
import postgres from 'postgres';
import { createClient } from 'redis';
import { type IdempotencyOptions, IdempotencyError, MemoryStore, REPLAYED_HEADER, type Store } from 'oncely';
import { createFetch, type FetchLike } from 'oncely/client';
import { idempotency as expressIdempotency } from 'oncely/express';
import { idempotency as fastifyIdempotency } from 'oncely/fastify';
import { withIdempotency as withFetchIdempotency } from 'oncely/fetch';
import { idempotency as honoIdempotency } from 'oncely/hono';
import { idempotency as koaIdempotency } from 'oncely/koa';
import { IdempotencyModule, Idempotent } from 'oncely/nestjs';
import { withIdempotency as withNodeIdempotency } from 'oncely/node';
import { PostgresStore } from 'oncely/postgres';
import { RedisStore } from 'oncely/redis';
import { SqliteStore } from 'oncely/sqlite';
import { startGateway } from 'oncely/gateway';
import { describeStoreContract } from 'oncely/testing';

const store: Store = new MemoryStore();
const options: IdempotencyOptions<unknown> = { store, ttlMs: 60_000 };
const header: string = REPLAYED_HEADER;

const app = express();
app.use(expressIdempotency({ store }));

const fastify = Fastify();
await fastify.register(fastifyIdempotency, { store });
fastify.post('/payments', { config: { idempotency: false } }, async () => ({ ok: true }));

const hono = new Hono();
hono.use('/payments/*', honoIdempotency({ store }));

const koa = new Koa();
koa.use(koaIdempotency({ store }));

export const fetchHandler: (request: Request) => Promise<Response> = withFetchIdempotency(
  async () => new Response('ok'),
  { store },
);
export const listener = withNodeIdempotency((_req, res) => res.end('ok'), { store });
export const nestModule = IdempotencyModule.forRoot(options);
export const nestDecorator = Idempotent({ ttlMs: 1_000 });

const stores: Store[] = [
  new SqliteStore({ path: ':memory:' }),
  new RedisStore({ client: new Redis({ lazyConnect: true }) }),
  new RedisStore({ client: createClient() }),
  new PostgresStore({ pool: new pg.Pool() }),
  new PostgresStore({ sql: postgres() }),
];
export const gateway = () => startGateway({ upstream: 'http://127.0.0.1:8080', store: 'sqlite:./oncely.db' });
export const retryingFetch: FetchLike = createFetch({ retries: 2 });
describeStoreContract('memory', () => new MemoryStore());
export const problem = (error: unknown) => (error instanceof IdempotencyError ? error.toProblem() : undefined);
export { app, fastify, header, hono, koa, stores };
`;

/** A CommonJS TypeScript source: TypeScript >= 5.8 with NodeNext types require(esm) as Node runs it. */
const CONSUMER_CTS = `import { MemoryStore, type Store } from 'oncely';
import { idempotency } from 'oncely/express';
import { createFetch } from 'oncely/client';

const store: Store = new MemoryStore();
export const middleware = idempotency({ store });
export const retryingFetch = createFetch();
`;

const TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    lib: ['ES2023', 'DOM'],
    types: ['node'],
    strict: true,
    // Our .d.ts files are what is being checked: do not skip them.
    skipLibCheck: false,
    noEmit: true,
    experimentalDecorators: true,
    emitDecoratorMetadata: true,
  },
  include: ['*.ts', '*.cts'],
};

/**
 * Type-checks the consumer project with `skipLibCheck: false`, because oncely's own `.d.ts` files
 * are under test. Errors inside other packages' declarations (a peer's types out of step with one of
 * its dependencies) are no defect of oncely: they are counted, not failed on.
 */
async function typeCheck(dir, tsc) {
  const { stdout = '' } = await sh(process.execPath, [tsc, '-p', 'tsconfig.json', '--pretty', 'false'], dir, {
    allowFailure: true,
  });
  const errors = stdout.split('\n').filter((line) => /^\S.*\(\d+,\d+\): error /.test(line));
  const foreign = errors.filter(
    (line) => line.includes('node_modules/') && !line.includes('node_modules/oncely/'),
  );
  const ours = errors.filter((line) => !foreign.includes(line));
  if (ours.length > 0 || (errors.length === 0 && stdout.includes('error'))) {
    fail(`the consumer project does not type-check:\n${stdout}`);
  }
  return `ts: every subpath type-checks from .ts (ESM) and .cts (CommonJS) under NodeNext, skipLibCheck off (${foreign.length} errors in other packages' declarations ignored)`;
}

async function installFull(dir, tarball) {
  const dependencies = { oncely: `file:${tarball}`, express4: `npm:express@${installedVersion('express4')}` };
  for (const name of CONSUMER_PACKAGES) dependencies[name] = installedVersion(name);
  write(dir, { 'package.json': JSON.stringify({ name: 'consumer', private: true, dependencies }, null, 2) });
  await npmInstall(dir);
}

async function installBare(dir, tarball) {
  const dependencies = { oncely: `file:${tarball}` };
  write(dir, {
    'package.json': JSON.stringify({ name: 'bare', private: true, type: 'module', dependencies }, null, 2),
  });
  await npmInstall(dir);
}

async function npmInstall(dir) {
  const t0 = Date.now();
  await sh(
    'npm',
    ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error'],
    dir,
  );
  log(`installed ${dir} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

async function main() {
  checkBuilt();
  const names = subpaths();
  const work = mkdtempSync(join(tmpdir(), 'oncely-pack-check-'));
  try {
    const tarball = await pack(work);
    const full = join(work, 'full');
    const bare = join(work, 'bare');
    // Two installs, two cores: run them side by side.
    await Promise.all([installFull(full, tarball), installBare(bare, tarball)]);

    // One install serves the three projects below (Node resolves packages up the directory tree);
    // each has its own package.json, so the module type is the project's, as for a user.
    const esm = join(full, 'esm');
    const cjs = join(full, 'cjs');
    const ts = join(full, 'ts');
    write(esm, {
      'package.json': '{ "type": "module" }\n',
      'replay.cjs': REPLAY_CJS,
      'smoke.mjs': esmSmoke(names),
    });
    write(cjs, {
      'package.json': '{ "type": "commonjs" }\n',
      'replay.cjs': REPLAY_CJS,
      'smoke.js': cjsSmoke(names),
    });
    write(ts, {
      'package.json': '{ "type": "module" }\n',
      'tsconfig.json': JSON.stringify(TSCONFIG, null, 2),
      'consumer.ts': CONSUMER_TS,
      'consumer-cjs.cts': CONSUMER_CTS,
    });
    write(bare, { 'smoke.mjs': bareSmoke(RUNTIME_PEERS) });

    const tsc = join(full, 'node_modules', 'typescript', 'bin', 'tsc');
    const results = await Promise.all([
      typeCheck(ts, tsc),
      sh(process.execPath, ['smoke.mjs'], esm, { timeoutMs: 60_000 }),
      sh(process.execPath, ['smoke.js'], cjs, { timeoutMs: 60_000 }),
      sh(process.execPath, ['smoke.mjs'], bare, { timeoutMs: 60_000 }),
      sh(join(bare, 'node_modules', '.bin', 'oncely'), ['--help'], bare, { timeoutMs: 60_000 }).then(
        ({ stdout }) => {
          if (!stdout.includes('oncely gateway')) fail(`oncely --help printed:\n${stdout}`);
          return 'bin: oncely --help runs with no optional peer installed';
        },
      ),
      sh(join(root, 'node_modules', '.bin', 'publint'), ['run', tarball, '--strict'], root).then(
        ({ stdout }) => `publint: ${stdout.trim().split('\n').at(-1)}`,
      ),
      sh(
        join(root, 'node_modules', '.bin', 'attw'),
        [tarball, '--profile', 'esm-only', '--format', 'ascii'],
        root,
      ).then(() => 'attw --profile esm-only: no problems'),
    ]);
    for (const result of results) {
      const text = typeof result === 'string' ? result : `${result.stdout}${result.stderr}`.trim();
      for (const line of text.split('\n')) log(line);
    }
    log(`ok in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    if (keep) log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
