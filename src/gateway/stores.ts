/**
 * @module Opening a store from a URL for the gateway (`sqlite:PATH`, `memory:`, `redis://`, `postgres://`).
 * Drivers load only when their store is used.
 */
import type { Store } from '../core/store.js';
import { MemoryStore } from '../stores/memory.js';

/** A store the gateway opened, with whatever connection it created for it. */
export interface OpenedStore {
  store: Store;
  /** What the URL names, for logs: `sqlite`, `memory`, `redis` or `postgres`. */
  kind: 'sqlite' | 'memory' | 'redis' | 'postgres';
  /** Close the store and the connection the gateway made for it. Safe to call twice. */
  close(): Promise<void>;
}

/** The store could not be opened or did not answer; `message` is the one line the CLI prints. */
export class StoreOpenError extends Error {
  override name = 'StoreOpenError';
}

/** A key that never holds a record; looking it up proves the store answers (startup, /healthz). */
export const SENTINEL = { scope: 'oncely-gateway', key: 'oncely-healthz-sentinel' } as const;

// Variables, not literals, so the gateway compiles and runs before every store file exists and so
// a driver is only loaded when its store is asked for.
const SQLITE_MODULE = '../stores/sqlite.js';
const REDIS_MODULE = '../stores/redis.js';
const POSTGRES_MODULE = '../stores/postgres.js';

/**
 * Open the store a URL names and check that it answers. Throws {@link StoreOpenError} with one line.
 *
 * @param url `memory:`, `sqlite:PATH` (`sqlite::memory:` for a private database; `?synchronous=normal`
 *   trades power-loss durability for commits that do not wait for fsync), `redis://HOST:PORT/DB`
 *   (`?prefix=app:` sets the key prefix) or `postgres://USER@HOST:PORT/DB` (`?schema=oncely` sets the schema,
 *   which must exist)
 * @example
 * const { store, close } = await openStore('sqlite:./oncely.db');
 */
export async function openStore(url: string): Promise<OpenedStore> {
  const opened = await create(url);
  try {
    await withTimeout(opened.store.get(SENTINEL.scope, SENTINEL.key), 5_000);
  } catch (error) {
    await opened.close().catch(() => {});
    throw new StoreOpenError(`store ${redactUrl(url)} does not answer: ${oneLine(error)}`);
  }
  return opened;
}

async function create(url: string): Promise<OpenedStore> {
  if (url === 'memory:') {
    const store = new MemoryStore();
    return { store, kind: 'memory', close: once(() => store.close()) };
  }
  if (url.startsWith('sqlite:')) {
    const { path, synchronous } = sqliteTarget(url);
    const { SqliteStore } = await load(SQLITE_MODULE, 'sqlite');
    let store: Store;
    try {
      store = new SqliteStore(synchronous === undefined ? { path } : { path, synchronous });
    } catch (error) {
      throw new StoreOpenError(`store sqlite:${path} cannot be opened: ${oneLine(error)}`);
    }
    return { store, kind: 'sqlite', close: once(() => store.close()) };
  }
  if (/^rediss?:\/\//.test(url)) {
    const [{ RedisStore }, { Redis }] = await Promise.all([load(REDIS_MODULE, 'redis'), import('ioredis')]);
    // Fail fast at startup instead of queueing commands while reconnecting forever.
    const { connection, option: prefix } = takeParam(url, 'prefix');
    const client = new Redis(connection, {
      lazyConnect: true,
      maxRetriesPerRequest: 1,
      connectTimeout: 5_000,
    });
    // Reported through failed commands (S2), not as an unhandled event; the first one explains startup.
    let connectError: unknown;
    client.on('error', (error) => {
      connectError ??= error;
    });
    try {
      await client.connect();
    } catch (error) {
      client.disconnect();
      throw new StoreOpenError(`store ${redactUrl(url)} is unreachable: ${oneLine(connectError ?? error)}`);
    }
    const store: Store = new RedisStore(prefix === undefined ? { client } : { client, prefix });
    return {
      store,
      kind: 'redis',
      close: once(async () => {
        await store.close();
        await client.quit().catch(() => client.disconnect());
      }),
    };
  }
  if (/^postgres(ql)?:\/\//.test(url)) {
    const [{ PostgresStore }, pg] = await Promise.all([load(POSTGRES_MODULE, 'postgres'), import('pg')]);
    const { connection, option: schema } = takeParam(url, 'schema');
    const pool = new pg.default.Pool({ connectionString: connection, connectionTimeoutMillis: 5_000 });
    pool.on('error', () => {}); // idle-client errors surface on the next query (S2)
    const store = new PostgresStore(schema === undefined ? { pool } : { pool, schema });
    try {
      await store.migrate();
    } catch (error) {
      await pool.end().catch(() => {});
      throw new StoreOpenError(`store ${redactUrl(url)} is unreachable: ${oneLine(error)}`);
    }
    return {
      store,
      kind: 'postgres',
      close: once(async () => {
        await store.close();
        await pool.end();
      }),
    };
  }
  throw new StoreOpenError(
    `unknown store URL "${redactUrl(url)}": use sqlite:PATH, memory:, redis:// or postgres://`,
  );
}

/**
 * `sqlite:PATH[?synchronous=full|normal]`. `normal` is an explicit durability trade-off: in WAL mode
 * a commit no longer waits for fsync, so a power loss (not a process crash) can lose the last
 * records, and a retry after it would run again. The default stays `full`.
 */
function sqliteTarget(url: string): { path: string; synchronous: 'full' | 'normal' | undefined } {
  let path = url.slice('sqlite:'.length).replace(/^\/\/(?=\/)/, '');
  const option = /\?synchronous=([^&?]*)$/.exec(path);
  if (option === null) return { path, synchronous: undefined };
  path = path.slice(0, option.index);
  const synchronous = option[1];
  if (synchronous !== 'full' && synchronous !== 'normal') {
    throw new StoreOpenError(
      `store sqlite:${path}: ?synchronous must be full or normal, not "${synchronous}"`,
    );
  }
  return { path, synchronous };
}

/** oncely's own query parameter (`?prefix=` for Redis, `?schema=` for PostgreSQL), removed before the driver sees the URL. */
function takeParam(url: string, name: string): { connection: string; option: string | undefined } {
  const parsed = new URL(url);
  const option = parsed.searchParams.get(name) ?? undefined;
  if (option === undefined) return { connection: url, option };
  parsed.searchParams.delete(name);
  return { connection: parsed.toString(), option };
}

// biome-ignore lint/suspicious/noExplicitAny: store modules are loaded by a computed specifier
async function load(specifier: string, name: string): Promise<any> {
  try {
    return await import(specifier);
  } catch (error) {
    throw new StoreOpenError(`the ${name} store cannot be loaded: ${oneLine(error)}`);
  }
}

function once(close: () => Promise<void>): () => Promise<void> {
  let closing: Promise<void> | undefined;
  return () => (closing ??= close());
}

function withTimeout<T>(promise: T | Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Never print a password from a store URL. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:/@]+):[^@/]*@/, '//$1:***@');
}

function oneLine(error: unknown): string {
  const message = error instanceof Error ? error.message || error.name : String(error);
  return message.split('\n')[0]!;
}
