/**
 * @module Shared by the race, crash and outage suites: store environments (each run isolated and
 * cleaned up), a cluster of `_server.ts` child processes, and a keep-alive HTTP client.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, type IncomingHttpHeaders, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { PostgresStore } from '../../src/stores/postgres.js';
import { spawnTs, type TsChild } from '../support/child.js';
import { POSTGRES_URL, REDIS_URL } from '../support/services.js';
import type { ServerConfig } from './_server.js';

const SERVER = join(import.meta.dirname, '_server.ts');

/** Where a suite's records live: the config every child gets, and how to leave nothing behind. */
export interface StoreEnv {
  readonly name: 'sqlite' | 'redis' | 'postgres';
  readonly config: ServerConfig;
  cleanup(): Promise<void>;
}

/** A SQLite file in a fresh temp directory, removed afterwards. */
export function sqliteEnv(): StoreEnv {
  const dir = mkdtempSync(join(tmpdir(), 'oncely-races-'));
  return {
    name: 'sqlite',
    config: { store: 'sqlite', path: join(dir, 'records.db') },
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** A random key prefix on `url`; every key under it is deleted afterwards. */
export function redisEnv(url = REDIS_URL): StoreEnv {
  const prefix = `oncely-races:${randomUUID()}:`;
  return {
    name: 'redis',
    config: { store: 'redis', url, prefix },
    cleanup: async () => {
      const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
      client.on('error', () => {});
      try {
        await client.connect();
        let cursor = '0';
        do {
          const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
          if (keys.length > 0) await client.del(...keys);
          cursor = next;
        } while (cursor !== '0');
      } catch {
        // A private server that is already gone holds nothing.
      } finally {
        client.disconnect();
      }
    },
  };
}

/**
 * A schema of its own, created and migrated through `setupUrl` and dropped afterwards; children
 * connect through `childUrl` (a cuttable proxy, in the outage suite).
 */
export async function postgresEnv(childUrl = POSTGRES_URL, setupUrl = POSTGRES_URL): Promise<StoreEnv> {
  const schema = `oncely_races_${randomBytes(6).toString('hex')}`;
  const pool = new pg.Pool({ connectionString: setupUrl, max: 1 });
  await pool.query(`CREATE SCHEMA ${schema}`);
  await new PostgresStore({ pool, schema, sweepIntervalMs: 0 }).migrate();
  return {
    name: 'postgres',
    config: { store: 'postgres', url: childUrl, schema },
    cleanup: async () => {
      await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await pool.end();
    },
  };
}

/** One child server. */
export interface Server {
  readonly child: TsChild;
  readonly port: number;
  readonly agent: Agent;
}

/** Start `count` child servers on one store; resolves once every one listens. */
export async function startServers(count: number, config: ServerConfig): Promise<Server[]> {
  // The first child fills the transpile cache (test/support/child.ts); the others then start fast.
  const first = await startServer(config);
  const rest = await Promise.all(Array.from({ length: count - 1 }, () => startServer(config)));
  return [first, ...rest];
}

export async function startServer(config: ServerConfig): Promise<Server> {
  const child = spawnTs(SERVER, [JSON.stringify(config)]);
  const { port } = await child.next<{ type: 'ready'; port: number }>('ready');
  return { child, port, agent: new Agent({ keepAlive: true, maxSockets: 16 }) };
}

/** How often the handler ran per key, summed over `servers`. */
export async function executions(servers: readonly Server[]): Promise<Map<string, number>> {
  const total = new Map<string, number>();
  for (const server of servers) {
    const { counts } = await server.child.ask<{ type: 'counts'; counts: Record<string, number> }>(
      { type: 'counts' },
      'counts',
    );
    for (const [key, n] of Object.entries(counts)) total.set(key, (total.get(key) ?? 0) + n);
  }
  return total;
}

/** Close what the parent holds for `servers` (their children are killed by `killAll`). */
export function dropAgents(servers: readonly Server[]): void {
  for (const server of servers) server.agent.destroy();
}

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** The `code` of a problem response, or undefined. */
export function codeOf(reply: Reply): string | undefined {
  try {
    return (JSON.parse(reply.body) as { code?: string }).code;
  } catch {
    return undefined;
  }
}

/** POST `body` with `key` to `server`; `hold` makes the handler wait for a `release` message. */
export function post(
  server: Server,
  key: string,
  options: { body?: string; hold?: boolean; path?: string } = {},
): Promise<Reply> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'idempotency-key': key,
  };
  if (options.hold) headers['x-hold'] = '1';
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: server.port,
        method: 'POST',
        path: options.path ?? '/orders',
        headers,
        agent: server.agent,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body ?? `{"key":"${key}"}`);
  });
}

/** Run `tasks` with at most `limit` at once; results in task order. */
export async function pooled<T>(tasks: ReadonlyArray<() => Promise<T>>, limit: number): Promise<T[]> {
  const results = new Array<T>(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const index = next++;
      results[index] = await tasks[index]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}

/**
 * Poll `probe` until it returns a value (not undefined) or `deadlineMs` passes. Only for real
 * expiry (a lease running out), never as a stand-in for an event.
 */
export async function until<T>(
  probe: () => Promise<T | undefined>,
  deadlineMs: number,
  what: string,
): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** A fresh valid key (K3) with a readable tag. */
export function newKey(tag: string): string {
  return `${tag}-${randomUUID()}`;
}
