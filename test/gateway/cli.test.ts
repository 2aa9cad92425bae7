/**
 * The `oncely` command as a child process, compiled from src/ (type checking is tsc's job elsewhere).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scopeOf } from '../../src/gateway/admin.js';
import { SqliteStore } from '../../src/stores/sqlite.js';
import { deferred, send, Upstream } from './helpers.js';

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');
const out = join(root, '.tmp', `gateway-cli-${process.pid}`);
const cli = join(out, 'gateway', 'cli.js');
let work: string;

beforeAll(async () => {
  // Only the CLI's import graph and the stores it loads; the output sits under the repo so that
  // node_modules resolves.
  await run(
    process.execPath,
    [
      join(root, 'node_modules/typescript/bin/tsc'),
      ...[
        '--outDir',
        out,
        '--rootDir',
        join(root, 'src'),
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
      ],
      ...['--target', 'es2022', '--skipLibCheck', '--noCheck', '--types', 'node'],
      join(root, 'src/gateway/cli.ts'),
      join(root, 'src/stores/sqlite.ts'),
    ],
    { cwd: root },
  );
  work = mkdtempSync(join(tmpdir(), 'oncely-cli-'));
}, 120_000);

afterAll(() => {
  rmSync(out, { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Run to completion. */
async function oncely(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [cli, ...args], { cwd: work, env: cleanEnv() }, (error, stdout, stderr) => {
      done({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('ONCELY_')) delete env[name];
  return env;
}

/** A long-running child with its output gathered and awaitable. */
class Child {
  readonly process: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  readonly #waiters: Array<() => void> = [];

  constructor(args: string[]) {
    this.process = spawn(process.execPath, [cli, ...args], { cwd: work, env: cleanEnv() });
    this.process.stdout!.on('data', (chunk: Buffer) => this.#append('stdout', chunk));
    this.process.stderr!.on('data', (chunk: Buffer) => this.#append('stderr', chunk));
    this.exited = new Promise((resolve) => this.process.once('exit', (code) => resolve(code)));
  }

  #append(stream: 'stdout' | 'stderr', chunk: Buffer) {
    this[stream] += chunk.toString();
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /** Resolve with the first match of `pattern` in the output, as soon as it appears. */
  async waitFor(stream: 'stdout' | 'stderr', pattern: RegExp): Promise<RegExpMatchArray> {
    for (;;) {
      const match = this[stream].match(pattern);
      if (match) return match;
      const more = new Promise<void>((resolve) => this.#waiters.push(resolve));
      const exited = this.exited.then(() => 'exited' as const);
      if ((await Promise.race([more, exited])) === 'exited' && !this[stream].match(pattern)) {
        throw new Error(`exited before ${pattern}: ${this.stdout}\n${this.stderr}`);
      }
    }
  }
}

describe('oncely CLI', () => {
  it('G1: oncely --help and oncely gateway --help explain the commands and flags with examples', async () => {
    const main = await oncely(['--help']);
    expect(main.code).toBe(0);
    expect(main.stdout).toMatch(
      /Usage:[\s\S]*oncely gateway[\s\S]*oncely inspect[\s\S]*oncely sweep[\s\S]*Examples:/,
    );
    const gateway = await oncely(['gateway', '--help']);
    expect(gateway.code).toBe(0);
    for (const flag of [
      '--upstream',
      '--listen',
      '--store',
      '--ttl',
      '--workers',
      '--admin',
      'ONCELY_UPSTREAM',
    ]) {
      expect(gateway.stdout).toContain(flag);
    }
    expect(gateway.stdout).toContain('Examples:');
  });

  it('G1: a bad flag, a bad value or an unreachable store fails at startup with one line and exit code ≠ 0', async () => {
    for (const args of [
      ['gateway', '--nope'],
      ['gateway', '--ttl', 'forever'],
      ['gateway', '--upstream', 'http://127.0.0.1:9', '--store', 'redis://127.0.0.1:1'],
      ['frobnicate'],
    ]) {
      const result = await oncely(args);
      expect(result.code, args.join(' ')).not.toBe(0);
      expect(result.stderr).toMatch(/^oncely: .+\n$/);
      expect(result.stdout).toBe('');
    }
  });

  it('G1: with no --upstream the demo starts, prints three curl commands, and replays POST /payments', async () => {
    const child = new Child(['gateway', '--listen', '127.0.0.1:0']);
    try {
      const [, url] = await child.waitFor('stderr', /running behind (http:\/\/[\d.:]+)/);
      await child.waitFor('stderr', /3\. 422/);
      expect(child.stderr.match(/curl /g)?.length).toBeGreaterThanOrEqual(3);
      const request = {
        method: 'POST',
        path: '/payments?delay=0',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'cli-demo-key-01' },
        body: '{"amount":1000,"currency":"eur"}',
      };
      const first = await send(url!, request);
      const second = await send(url!, request);
      expect(first.status).toBe(201);
      expect(second.headers['idempotent-replayed']).toBe('true');
      expect(second.body.equals(first.body)).toBe(true);
      const conflicting = await send(url!, { ...request, body: '{"amount":5,"currency":"eur"}' });
      expect(conflicting.status).toBe(422);
    } finally {
      child.process.kill('SIGTERM');
    }
    expect(await child.exited).toBe(0);
  });

  it('G1: SIGTERM during an in-flight request lets it finish and record its outcome, then exits 0', async () => {
    const upstream = new Upstream();
    const arrived = deferred();
    const release = deferred();
    upstream.routes.set('POST /slow', async (_req, res) => {
      arrived.resolve();
      await release.promise;
      res.writeHead(201, { 'content-type': 'text/plain' }).end('created');
    });
    const upstreamUrl = await upstream.listen();
    const db = join(work, 'shutdown.db');
    const child = new Child([
      'gateway',
      '--upstream',
      upstreamUrl,
      '--listen',
      '127.0.0.1:0',
      '--store',
      `sqlite:${db}`,
    ]);
    try {
      const [, url] = await child.waitFor('stdout', /"url":"(http:\/\/[\d.:]+)"/);
      const pending = send(url!, {
        method: 'POST',
        path: '/slow',
        headers: { 'idempotency-key': 'cli-shutdown-01' },
        body: 'x',
      });
      await arrived.promise;
      child.process.kill('SIGTERM');
      await child.waitFor('stderr', /SIGTERM: finishing in-flight requests/);
      release.resolve();
      const reply = await pending;
      expect(reply.status).toBe(201);
      expect(reply.body.toString()).toBe('created');
      expect(await child.exited).toBe(0);
    } finally {
      child.process.kill('SIGKILL');
      await upstream.close();
    }
    const store = new SqliteStore({ path: db });
    try {
      const record = await store.get(scopeOf([undefined]), 'cli-shutdown-01');
      expect(record?.state).toBe('completed');
      expect(record?.response?.status).toBe(201);
    } finally {
      await store.close();
    }

    const inspected = await oncely(['inspect', 'cli-shutdown-01', '--store', `sqlite:${db}`]);
    expect(inspected.code).toBe(0);
    expect(JSON.parse(inspected.stdout)).toMatchObject({ state: 'completed', status: 201 });
    const missing = await oncely([
      'inspect',
      'cli-shutdown-01',
      '--store',
      `sqlite:${db}`,
      '--authorization',
      'x',
    ]);
    expect(missing.code).toBe(1);
    const swept = await oncely(['sweep', '--store', `sqlite:${db}`]);
    expect(swept.code).toBe(0);
    expect(swept.stdout).toMatch(/^removed \d+ expired records?\n$/);
  });

  it('L5: --workers 2 share the port and the SQLite file: one upstream call, metrics aggregated', async () => {
    const upstream = new Upstream();
    const upstreamUrl = await upstream.listen();
    const db = join(work, 'workers.db');
    const child = new Child([
      'gateway',
      ...['--upstream', upstreamUrl, '--listen', '127.0.0.1:0', '--store', `sqlite:${db}`],
      ...['--workers', '2', '--admin', '127.0.0.1:0'],
    ]);
    try {
      const [, url, adminUrl] = await child.waitFor(
        'stderr',
        /2 workers listening on (http:\/\/[\d.:]+), admin on (http:\/\/[\d.:]+)/,
      );
      const request = {
        method: 'POST',
        path: '/payments',
        headers: { 'idempotency-key': 'cli-workers-01' },
        body: 'x',
      };
      const replies = [];
      for (let i = 0; i < 4; i++) replies.push(await send(url!, request));
      expect(replies.map((reply) => reply.status)).toEqual([201, 201, 201, 201]);
      expect(replies.filter((reply) => reply.headers['idempotent-replayed'] === 'true')).toHaveLength(3);
      expect(upstream.count('POST /payments')).toBe(1);
      const metrics = (await send(adminUrl!, { path: '/metrics' })).body.toString();
      expect(metrics).toContain('oncely_requests_total{outcome="executed"} 1');
      expect(metrics).toContain('oncely_requests_total{outcome="replayed"} 3');
      expect((await send(adminUrl!, { path: '/healthz' })).status).toBe(200);
      child.process.kill('SIGTERM');
      expect(await child.exited).toBe(0);
    } finally {
      child.process.kill('SIGKILL');
      await upstream.close();
    }
  });
});
