import { type ChildProcess, fork } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AcquireInput, StoredResponse } from '../core/store.js';
import { describeStoreContract } from '../testing.js';
import { SqliteStore } from './sqlite.js';

const dir = mkdtempSync(join(tmpdir(), 'oncely-sqlite-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const tempFile = () => join(dir, `${randomUUID()}.db`);

const contractFile = tempFile();
describeStoreContract('SqliteStore (file)', () => new SqliteStore({ path: contractFile }));
describeStoreContract('SqliteStore (:memory:)', () => new SqliteStore({ path: ':memory:' }));

const input = (key: string, extra: Partial<AcquireInput> = {}): AcquireInput => ({
  scope: 'scope',
  key,
  fingerprint: 'fp-1',
  token: randomUUID(),
  leaseMs: 60_000,
  ...extra,
});
const response = (body = new TextEncoder().encode('{"ok":true}')): StoredResponse => ({
  status: 201,
  headers: { 'content-type': 'application/json', link: ['<a>', '<b>'] },
  body,
  bodyOmitted: false,
});
/** Polls `check` until it holds; real expiry cannot be awaited any other way. */
async function eventually(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Other processes running the real SqliteStore: sqlite.ts transpiled to plain ESM (its only runtime
 * import, better-sqlite3, pointed at this checkout's copy), driven over IPC.
 */
function writeChildScript(): string {
  const source = readFileSync(fileURLToPath(new URL('./sqlite.ts', import.meta.url)), 'utf8');
  const driver = pathToFileURL(createRequire(import.meta.url).resolve('better-sqlite3')).href;
  const { outputText } = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  });
  writeFileSync(join(dir, 'sqlite-store.mjs'), outputText.replace(`'better-sqlite3'`, `'${driver}'`));
  const child = join(dir, 'child.mjs');
  writeFileSync(
    child,
    `import { randomUUID } from 'node:crypto';
import { SqliteStore } from './sqlite-store.mjs';
const store = new SqliteStore({ path: process.argv[2], sweepIntervalMs: 0 });
const acquire = (key, leaseMs) =>
  store.acquire({ scope: 'scope', key, fingerprint: 'fp-child', token: randomUUID(), leaseMs });
process.on('message', async (message) => {
  if (message.type === 'race') {
    const won = [];
    for (const key of message.keys) if ((await acquire(key, 60000)).state === 'acquired') won.push(key);
    process.send({ type: 'raced', won });
  } else if (message.type === 'hold') {
    process.send({ type: 'held', state: (await acquire(message.key, message.leaseMs)).state });
  }
});
process.send({ type: 'ready' });
`,
  );
  return child;
}

function nextMessage<T>(child: ChildProcess, type: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: { type: string }) => {
      if (message.type !== type) return;
      child.off('message', onMessage);
      child.off('exit', onExit);
      resolve(message as T);
    };
    const onExit = (code: number | null) => reject(new Error(`child exited (${code}) before '${type}'`));
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

describe('SqliteStore', () => {
  describe('several processes on one file', () => {
    let script: string;
    const children: ChildProcess[] = [];
    const spawn = async (file: string) => {
      const child = fork(script, [file], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      children.push(child);
      await nextMessage(child, 'ready');
      return child;
    };
    beforeAll(() => {
      script = writeChildScript();
    });
    afterAll(() => {
      for (const child of children) child.kill('SIGKILL');
    });

    it('L5: three processes racing for the same 300 keys: exactly one winner per key', async () => {
      const file = tempFile();
      // Creates the schema before the race, as a server would at start-up.
      const store = new SqliteStore({ path: file });
      const racers = await Promise.all([spawn(file), spawn(file)]);
      const keys = Array.from({ length: 300 }, () => `key-${randomUUID()}`);
      const results = racers.map((child) => nextMessage<{ won: string[] }>(child, 'raced'));
      for (const child of racers) child.send({ type: 'race', keys });
      // This process races too, over its own connection.
      const mine: string[] = [];
      for (const key of keys) if ((await store.acquire(input(key))).state === 'acquired') mine.push(key);
      const won = [...mine, ...(await Promise.all(results)).flatMap((r) => r.won)];
      expect(won).toHaveLength(keys.length);
      expect(new Set(won).size).toBe(keys.length);
      for (const child of racers) child.kill();
      await store.close();
    });

    it('L3: a process killed while holding a lease leaves the key to the next request once the lease runs out', async () => {
      const file = tempFile();
      const store = new SqliteStore({ path: file });
      const child = await spawn(file);
      const key = `key-${randomUUID()}`;
      const held = nextMessage<{ state: string }>(child, 'held');
      child.send({ type: 'hold', key, leaseMs: 100 });
      expect((await held).state).toBe('acquired');
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
      expect(await store.acquire(input(key))).toEqual({ state: 'in-flight', fingerprint: 'fp-child' });
      await eventually(
        async () => (await store.acquire(input(key))).state === 'acquired',
        'the lease to run out',
      );
      await store.close();
    });
  });

  it('L5: two stores (two connections) on one file see each other: one winner, then the replay', async () => {
    const file = tempFile();
    const a = new SqliteStore({ path: file });
    const b = new SqliteStore({ path: file });
    const key = `key-${randomUUID()}`;
    const first = input(key);
    const results = await Promise.all([a.acquire(first), b.acquire(input(key)), a.acquire(input(key))]);
    expect(results.map((r) => r.state)).toEqual(['acquired', 'in-flight', 'in-flight']);
    expect(await b.complete('scope', key, first.token, response(), 60_000)).toBe(true);
    expect(await a.acquire(input(key))).toEqual({
      state: 'completed',
      fingerprint: 'fp-1',
      response: response(),
    });
    await a.close();
    await b.close();
  });

  it('R6: records survive closing and reopening the file', async () => {
    const file = tempFile();
    const before = new SqliteStore({ path: file });
    const done = input(`key-${randomUUID()}`);
    const running = input(`key-${randomUUID()}`);
    await before.acquire(done);
    await before.acquire(running);
    await before.complete('scope', done.key, done.token, response(new Uint8Array([0, 255, 10, 13])), 60_000);
    await before.close();
    const after = new SqliteStore({ path: file });
    expect(await after.acquire(input(done.key))).toEqual({
      state: 'completed',
      fingerprint: 'fp-1',
      response: response(new Uint8Array([0, 255, 10, 13])),
    });
    expect((await after.acquire(input(running.key))).state).toBe('in-flight');
    // L4: the token from before the restart still owns its lease.
    expect(await after.complete('scope', running.key, running.token, response(), 60_000)).toBe(true);
    await after.close();
  });

  it('close() never closes a database the user passed in, and the store refuses work afterwards', async () => {
    const database = new Database(':memory:');
    const store = new SqliteStore({ database });
    await store.acquire(input('key-12345678'));
    await store.close();
    expect(database.open).toBe(true);
    expect(database.prepare('SELECT count(*) AS n FROM oncely_records_v1').get()).toEqual({ n: 1 });
    expect(() => store.acquire(input('key-23456789'))).toThrow(/closed/);
    database.close();
  });

  it('close() closes the database it opened (the WAL is checkpointed away)', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file });
    await store.acquire(input('key-12345678'));
    await store.close();
    // The last connection to close checkpoints and deletes the -wal file.
    expect(() => readFileSync(`${file}-wal`)).toThrow(/ENOENT/);
  });

  it('opens files in WAL mode with the busy timeout and synchronous level asked for', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file, busyTimeoutMs: 1234, synchronous: 'normal' });
    const database = new Database(file);
    // journal_mode is stored in the file; a fresh connection sees it.
    expect(database.pragma('journal_mode', { simple: true })).toBe('wal');
    database.close();
    const seen = spyOnPragmas(() => new SqliteStore({ path: tempFile() }));
    expect(seen).toContain('journal_mode = WAL');
    expect(seen).toContain('synchronous = FULL');
    await store.close();
  });

  it('S2: a write lock held past busyTimeoutMs makes acquire fail (the engine answers 503), replays still read', async () => {
    const file = tempFile();
    const store = new SqliteStore({ path: file, busyTimeoutMs: 0 });
    const done = input('key-12345678');
    await store.acquire(done);
    await store.complete('scope', done.key, done.token, response(), 60_000);
    const other = new Database(file);
    other.exec('BEGIN IMMEDIATE');
    expect(() => store.acquire(input('key-23456789'))).toThrow(/locked|busy/i);
    // WAL: a reader is not blocked by another connection's write lock.
    expect((await store.acquire(input(done.key))).state).toBe('completed');
    other.exec('ROLLBACK');
    expect((await store.acquire(input('key-23456789'))).state).toBe('acquired');
    other.close();
    await store.close();
  });

  it('the table name is versioned (oncely_records_v1) and can be changed', async () => {
    const database = new Database(':memory:');
    const store = new SqliteStore({ database });
    const custom = new SqliteStore({ database, tableName: 'idem_v2' });
    expect(store.tableName).toBe('oncely_records_v1');
    const names = database
      .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name")
      .all()
      .map((row) => (row as { name: string }).name);
    expect(names).toEqual(
      expect.arrayContaining([
        'idem_v2',
        'idem_v2_expires_at',
        'oncely_records_v1',
        'oncely_records_v1_expires_at',
      ]),
    );
    await custom.acquire(input('key-12345678'));
    expect((await store.acquire(input('key-12345678'))).state).toBe('acquired');
    await store.close();
    await custom.close();
    database.close();
  });

  it('T2: the sweep walks the expires_at index and every lookup the primary key (EXPLAIN QUERY PLAN)', async () => {
    const database = new Database(':memory:');
    const prepared: string[] = [];
    const prepare = database.prepare.bind(database);
    database.prepare = ((sql: string) => {
      prepared.push(sql);
      return prepare(sql);
    }) as typeof database.prepare;
    const store = new SqliteStore({ database, sweepIntervalMs: 0 });
    const plan = (sql: string) =>
      prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all(...Array.from(sql.matchAll(/\?/g), () => 0))
        .map((row) => (row as { detail: string }).detail)
        .join('\n');
    const statements = prepared.filter((sql) => !sql.startsWith('EXPLAIN'));
    const sweep = statements.filter((sql) => sql.includes('ORDER BY expires_at'));
    expect(sweep).toHaveLength(1);
    expect(plan(sweep[0]!)).toMatch(/USING (COVERING )?INDEX oncely_records_v1_expires_at \(expires_at<\?\)/);
    const lookups = statements.filter((sql) => sql !== sweep[0] && /WHERE scope = \?/.test(sql));
    expect(lookups.length).toBeGreaterThanOrEqual(4); // select, complete, renew, release
    for (const sql of lookups) {
      expect(plan(sql)).toMatch(/USING INDEX sqlite_autoindex_oncely_records_v1_1 \(scope=\? AND key=\?\)/);
    }
    expect(plan(statements.find((sql) => sql.includes('ON CONFLICT'))!)).not.toMatch(/SCAN/);
    await store.close();
    database.close();
  });

  it('T2: sweep() deletes past its 500-row batches up to the limit', async () => {
    const database = new Database(':memory:');
    const store = new SqliteStore({ database, sweepIntervalMs: 0 });
    const insert = database.prepare(
      'INSERT INTO oncely_records_v1 (scope, key, fingerprint, token, updated_at, expires_at) VALUES (?, ?, ?, ?, 0, ?)',
    );
    database.transaction(() => {
      for (let i = 0; i < 1200; i++) insert.run('scope', `expired-${i}`, 'fp', 't', 1 + i);
      insert.run('scope', 'live', 'fp', 't', Date.now() + 60_000);
    })();
    expect(await store.sweep(1100.5)).toBe(1100);
    expect(await store.sweep()).toBe(100);
    expect(await store.sweep()).toBe(0);
    expect((await store.get('scope', 'live'))?.state).toBe('in-flight');
    await store.close();
    database.close();
  });

  it('T2: sweep() yields to the event loop between batches, so a backlog never stalls requests', async () => {
    const database = new Database(':memory:');
    const store = new SqliteStore({ database, sweepIntervalMs: 0 });
    const insert = database.prepare(
      'INSERT INTO oncely_records_v1 (scope, key, fingerprint, token, updated_at, expires_at) VALUES (?, ?, ?, ?, 0, ?)',
    );
    database.transaction(() => {
      for (let i = 0; i < 1500; i++) insert.run('scope', `expired-${i}`, 'fp', 't', 1 + i);
    })();
    const count = database.prepare('SELECT count(*) AS n FROM oncely_records_v1').pluck();
    const seen: number[] = [];
    // An immediate callback queued now runs after the first batch, before the sweep finishes.
    setImmediate(() => seen.push(count.get() as number));
    expect(await store.sweep()).toBe(1500);
    expect(seen).toEqual([1000]);
    await store.close();
    database.close();
  });

  it('T2: the background sweep deletes expired rows on its own', async () => {
    const database = new Database(':memory:');
    const store = new SqliteStore({ database, sweepIntervalMs: 20 });
    const first = input('key-12345678');
    await store.acquire(first);
    await store.complete('scope', first.key, first.token, response(), 1);
    const count = database.prepare('SELECT count(*) AS n FROM oncely_records_v1').pluck();
    await eventually(() => count.get() === 0, 'the sweep timer');
    await store.close();
    database.close();
  });

  it('R5: bodies are stored as BLOB and headers as JSON text', async () => {
    const database = new Database(':memory:');
    const store = new SqliteStore({ database });
    const first = input('key-12345678');
    await store.acquire(first);
    await store.complete('scope', first.key, first.token, response(new Uint8Array([0, 1, 2])), 60_000);
    expect(
      database
        .prepare(
          'SELECT typeof(body) AS body, typeof(headers) AS headers, headers AS h FROM oncely_records_v1',
        )
        .get(),
    ).toEqual({ body: 'blob', headers: 'text', h: JSON.stringify(response().headers) });
    await store.close();
    database.close();
  });

  it('validates its options once, naming the option', () => {
    const database = new Database(':memory:');
    expect(() => new SqliteStore({})).toThrow(/options\.path/);
    expect(() => new SqliteStore({ path: '' })).toThrow(/options\.path/);
    expect(() => new SqliteStore({ path: ':memory:', database })).toThrow(/not both/);
    expect(() => new SqliteStore({ database, busyTimeoutMs: 10 })).toThrow(/options\.busyTimeoutMs/);
    expect(() => new SqliteStore({ path: ':memory:', busyTimeoutMs: -1 })).toThrow(/options\.busyTimeoutMs/);
    expect(() => new SqliteStore({ path: ':memory:', synchronous: 'off' as 'full' })).toThrow(
      /options\.synchronous/,
    );
    expect(() => new SqliteStore({ database, tableName: 'x; DROP TABLE y' })).toThrow(/options\.tableName/);
    expect(() => new SqliteStore({ database, sweepIntervalMs: 1.5 })).toThrow(/options\.sweepIntervalMs/);
    database.close();
  });
});

/** The PRAGMAs a store opening its own file issues. */
function spyOnPragmas(open: () => SqliteStore): string[] {
  const seen: string[] = [];
  const original = Database.prototype.pragma;
  Database.prototype.pragma = function (
    this: Database.Database,
    source: string,
    options?: Database.PragmaOptions,
  ) {
    seen.push(source);
    return original.call(this, source, options);
  };
  try {
    void open().close();
  } finally {
    Database.prototype.pragma = original;
  }
  return seen;
}

describe('SqliteStore on a database configured by the user', () => {
  it('R2: returns times and statuses as numbers even when the database defaults to BigInt', async () => {
    const database = new Database(':memory:').defaultSafeIntegers(true);
    const store = new SqliteStore({ database });
    const first = input('key-12345678');
    await store.acquire(first);
    await store.complete('scope', first.key, first.token, response(), 60_000);
    expect(await store.acquire(input(first.key))).toEqual({
      state: 'completed',
      fingerprint: 'fp-1',
      response: response(),
    });
    expect(typeof (await store.get('scope', first.key))!.expiresAt).toBe('number');
    await store.close();
    database.close();
  });
});
