/**
 * L5 across processes: several node:http servers (child processes) share one store, and every key is
 * sent several times at once, spread over all of them. The handler must run exactly once per key;
 * every other answer is a replay of that execution or a 409.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killAll } from '../support/child.js';
import { serviceAvailable } from '../support/services.js';
import {
  codeOf,
  dropAgents,
  executions,
  newKey,
  pooled,
  post,
  postgresEnv,
  type Reply,
  redisEnv,
  type Server,
  type StoreEnv,
  sqliteEnv,
  startServers,
} from './_harness.js';

const SERVERS = 4;
const KEYS = 200;
const COPIES = 6;
/** Requests in flight at once: enough for every copy of several keys to overlap, few enough for 2 cores. */
const CONCURRENCY = 24;

const redisUp = await serviceAvailable('redis');
const postgresUp = await serviceAvailable('postgres');

function describeRace(name: string, available: boolean, makeEnv: () => StoreEnv | Promise<StoreEnv>): void {
  describe.skipIf(!available)(`races over ${name}`, () => {
    let env: StoreEnv | undefined;
    let servers: Server[] = [];

    beforeAll(async () => {
      env = await makeEnv();
      // workMs: each handler takes a few ms, so the copies of a key overlap its execution.
      servers = await startServers(SERVERS, { ...env.config, workMs: 5 });
    }, 60_000);

    afterAll(async () => {
      dropAgents(servers);
      await killAll();
      await env?.cleanup();
    });

    it(`L5: ${KEYS} keys × ${COPIES} concurrent copies over ${SERVERS} processes run the handler exactly ${KEYS} times; every other answer is a replay of it or a 409`, async () => {
      const outcome = await race(servers, KEYS);
      expect(outcome.problems).toEqual([]);
      expect(outcome.executions).toBe(KEYS);
      expect(outcome.replays + outcome.conflicts).toBe(KEYS * (COPIES - 1));
      console.info(
        `[races] ${name}: ${SERVERS} processes, ${KEYS} keys × ${COPIES} copies = ${KEYS * COPIES} requests in ` +
          `${Math.round(outcome.wallMs)} ms (${Math.round((KEYS * COPIES * 1000) / outcome.wallMs)} req/s): ` +
          `${outcome.executions} executions, ${outcome.replays} replays, ${outcome.conflicts} × 409`,
      );
    }, 60_000);
  });
}

interface Outcome {
  problems: string[];
  executions: number;
  replays: number;
  conflicts: number;
  wallMs: number;
}

/** Send `keyCount` keys × COPIES copies over `servers`, then judge every answer against the executions. */
async function race(servers: readonly Server[], keyCount: number): Promise<Outcome> {
  const keys = Array.from({ length: keyCount }, (_, i) => newKey(`race${i}`));
  // The copies of one key sit next to each other in the queue, so they are in flight together,
  // and go round-robin to the servers, so every key is raced by every process.
  const tasks = keys.flatMap((key, i) =>
    Array.from({ length: COPIES }, (_, copy) => () => post(servers[(i + copy) % servers.length]!, key)),
  );
  const started = performance.now();
  const replies = await pooled(tasks, CONCURRENCY);
  const wallMs = performance.now() - started;

  const ran = await executions(servers);
  const outcome: Outcome = { problems: [], executions: 0, replays: 0, conflicts: 0, wallMs };
  const { problems } = outcome;
  keys.forEach((key, i) => {
    if (ran.get(key) !== 1) problems.push(`${key}: handler ran ${ran.get(key) ?? 0} times`);
    const copies = replies.slice(i * COPIES, (i + 1) * COPIES);
    const executed = copies.filter((r) => r.status === 201 && r.headers['idempotent-replayed'] === undefined);
    if (executed.length !== 1) {
      problems.push(`${key}: ${executed.length} unreplayed answers`);
      return;
    }
    const original = executed[0]!.body;
    for (const reply of copies) {
      if (reply === executed[0]) continue;
      if (isReplayOf(reply, original)) outcome.replays++;
      else if (reply.status === 409 && codeOf(reply) === 'idempotency_key_in_use') outcome.conflicts++;
      else problems.push(`${key}: unexpected ${reply.status} ${reply.body}`);
    }
  });
  for (const [key, n] of ran) {
    if (!keys.includes(key)) problems.push(`unknown key ran: ${key}`);
    outcome.executions += n;
  }
  return outcome;
}

function isReplayOf(reply: Reply, original: string): boolean {
  return reply.status === 201 && reply.headers['idempotent-replayed'] === 'true' && reply.body === original;
}

describeRace('SqliteStore (one file, WAL)', true, sqliteEnv);
describeRace('RedisStore', redisUp, () => redisEnv());
describeRace('PostgresStore (pg)', postgresUp, () => postgresEnv());

// The suite must be able to fail: processes that do not share a store (a MemoryStore each) run a
// key once per process, and the same judge reports it.
describe('races, negative control', () => {
  let servers: Server[] = [];
  afterAll(async () => {
    dropAgents(servers);
    await killAll();
  });

  it('L5: processes with unshared stores are caught running keys more than once', async () => {
    servers = await startServers(SERVERS, { store: 'memory', workMs: 5 });
    const outcome = await race(servers, 20);
    expect(outcome.executions).toBeGreaterThan(20);
    expect(outcome.problems.some((p) => /handler ran [2-9] times/.test(p))).toBe(true);
  }, 60_000);
});
