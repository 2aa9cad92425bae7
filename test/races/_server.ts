/**
 * @module Child process of the race, crash and outage suites: one node:http server behind
 * `withIdempotency`, on a store shared with its sibling processes.
 *
 * argv[2] is a JSON {@link ServerConfig}. Over IPC it sends `ready {port}`, `holding {key}` when a
 * handler with `x-hold` starts, and `event {…}` for the engine events named in `events`; it answers
 * `counts` with how often the handler ran per key; `release {key}` lets a held handler answer, and
 * `close` closes the server and the store, then exits.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { withIdempotency } from '../../src/adapters/node.js';
import type { EngineEventType } from '../../src/core/events.js';
import type { Store } from '../../src/core/store.js';

export interface ServerConfig {
  /** `memory`: a MemoryStore per process, NOT shared: the negative control of the race suite. */
  store: 'sqlite' | 'redis' | 'postgres' | 'memory';
  /** SQLite file. */
  path?: string;
  /** Redis or PostgreSQL URL. */
  url?: string;
  /** Redis key prefix. */
  prefix?: string;
  /** PostgreSQL schema (already migrated). */
  schema?: string;
  lockTimeoutMs?: number;
  storeTimeoutMs?: number;
  /** How long each handler works before answering, to widen the race window. */
  workMs?: number;
  /** Engine events forwarded to the parent. */
  events?: EngineEventType[];
}

interface Message {
  type: string;
  key?: string;
}

const config = JSON.parse(process.argv[2] ?? '{}') as ServerConfig;
const send = (message: object) => process.send?.(message);
// The parent is gone (or cut the channel): never outlive it.
process.on('disconnect', () => process.exit(0));

const counts: Record<string, number> = {};
const held = new Map<string, () => void>();
let executions = 0;

async function openStore(): Promise<{ store: Store; close: () => Promise<void> }> {
  if (config.store === 'memory') {
    const { MemoryStore } = await import('../../src/stores/memory.js');
    const store = new MemoryStore();
    return { store, close: () => store.close() };
  }
  if (config.store === 'sqlite') {
    const { SqliteStore } = await import('../../src/stores/sqlite.js');
    const store = new SqliteStore({ path: config.path!, sweepIntervalMs: 0 });
    return { store, close: () => store.close() };
  }
  if (config.store === 'redis') {
    const { Redis } = await import('ioredis');
    const { RedisStore } = await import('../../src/stores/redis.js');
    const client = new Redis(config.url!);
    // Reconnection is ioredis's job; a connection error while Redis is down is expected (S2).
    client.on('error', () => {});
    const store = new RedisStore({ client, prefix: config.prefix });
    return { store, close: async () => client.disconnect() };
  }
  const { default: pg } = await import('pg');
  const { PostgresStore } = await import('../../src/stores/postgres.js');
  const pool = new pg.Pool({ connectionString: config.url!, max: 4 });
  // An idle client whose socket dies emits 'error' on the pool; the pool drops it and reconnects later.
  pool.on('error', () => {});
  const store = new PostgresStore({ pool, schema: config.schema, sweepIntervalMs: 0 });
  return { store, close: () => pool.end() };
}

async function listener(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const key = String(req.headers['idempotency-key'] ?? '');
  counts[key] = (counts[key] ?? 0) + 1;
  const run = ++executions;
  if (req.headers['x-hold'] !== undefined) {
    const released = new Promise<void>((resolve) => held.set(key, resolve));
    send({ type: 'holding', key });
    await released;
  } else if (config.workMs) {
    await new Promise((resolve) => setTimeout(resolve, config.workMs));
  }
  res.statusCode = 201;
  res.setHeader('content-type', 'application/json');
  // A nonce per execution: a replay carries the very body its execution produced.
  res.end(JSON.stringify({ pid: process.pid, key, run, nonce: randomUUID() }));
}

const { store, close } = await openStore();
const forwarded = new Set(config.events ?? []);
const server = createServer(
  withIdempotency(listener, {
    store,
    lockTimeoutMs: config.lockTimeoutMs,
    storeTimeoutMs: config.storeTimeoutMs,
    onEvent: (event) => {
      if (!forwarded.has(event.type)) return;
      const error =
        event.error instanceof Error ? { name: event.error.name, message: event.error.message } : undefined;
      send({ type: 'event', event: { type: event.type, key: event.key, status: event.status, error } });
    },
  }),
);
server.keepAliveTimeout = 30_000;

process.on('message', (message: Message) => {
  if (message.type === 'counts') send({ type: 'counts', counts, executions });
  else if (message.type === 'release') {
    held.get(message.key!)?.();
    held.delete(message.key!);
  } else if (message.type === 'close') {
    server.closeAllConnections();
    server.close(() => {
      close().finally(() => process.exit(0));
    });
  }
});

server.listen(0, '127.0.0.1', () => {
  send({ type: 'ready', port: (server.address() as AddressInfo).port, pid: process.pid });
});
