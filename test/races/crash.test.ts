/**
 * L3 and L4 with real processes: a process that dies holding a lease wedges its key only until the
 * lease runs out; a process that was paused past its lease ("zombie") cannot overwrite the record of
 * the process that took the key over.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { killAll } from '../support/child.js';
import { serviceAvailable } from '../support/services.js';
import {
  codeOf,
  dropAgents,
  executions,
  newKey,
  post,
  postgresEnv,
  type Reply,
  redisEnv,
  type Server,
  type StoreEnv,
  sqliteEnv,
  startServers,
  until,
} from './_harness.js';

/**
 * Short enough to wait out, long enough that a request sent right after the kill still finds the
 * lease alive on a loaded machine (it was renewed at most LEASE_MS / 3 before).
 */
const LEASE_MS = 2_000;

const redisUp = await serviceAvailable('redis');
const postgresUp = await serviceAvailable('postgres');

interface Body {
  pid: number;
  nonce: string;
}

const parse = (reply: Reply) => JSON.parse(reply.body) as Body;
const executed = (reply: Reply) => reply.status === 201 && reply.headers['idempotent-replayed'] === undefined;

/** Send `key` to `server` until the answer is not a 409: the lease ran out. */
function afterLease(server: Server, key: string): Promise<Reply> {
  return until(
    async () => {
      const reply = await post(server, key);
      return reply.status === 409 ? undefined : reply;
    },
    LEASE_MS * 10,
    `the lease on ${key} to run out`,
  );
}

function describeCrashes(
  name: string,
  available: boolean,
  makeEnv: () => StoreEnv | Promise<StoreEnv>,
): void {
  describe.skipIf(!available)(`crashes and zombies over ${name}`, () => {
    let env: StoreEnv | undefined;
    let servers: Server[] = [];

    const start = async (count: number) => {
      env ??= await makeEnv();
      servers = await startServers(count, {
        ...env.config,
        lockTimeoutMs: LEASE_MS,
        events: ['fenced', 'store_error'],
      });
      return servers;
    };

    afterEach(async () => {
      dropAgents(servers);
      await killAll();
    });
    afterAll(async () => {
      await env?.cleanup();
    });

    it('L3: a process killed while holding a lease leaves its key 409 until the lease runs out, then the key runs once more', async () => {
      const [holder, other, third] = await start(3);
      const key = newKey('crash');
      const lost = post(holder!, key, { hold: true }).catch((error: Error) => error);
      await holder!.child.next('holding');
      await holder!.child.kill('SIGKILL');

      // L1/L2: the dead process's lease is still live in the store.
      const during = await post(other!, key);
      expect(during.status).toBe(409);
      expect(codeOf(during)).toBe('idempotency_key_in_use');

      // L3: once it runs out, the next request is a new first request.
      const rerun = await afterLease(other!, key);
      expect(executed(rerun)).toBe(true);
      expect(parse(rerun).pid).toBe(other!.child.pid);
      const replay = await post(third!, key);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body).toBe(rerun.body);
      expect((await executions([other!, third!])).get(key)).toBe(1);
      expect(await lost).toBeInstanceOf(Error);
    }, 60_000);

    it('L4: a process paused past its lease (SIGSTOP) is taken over; resumed (SIGCONT), its write is refused and the new owner’s record stands', async () => {
      const [zombie, successor, witness] = await start(3);
      const key = newKey('zombie');
      const first = post(zombie!, key, { hold: true });
      await zombie!.child.next('holding');
      // Paused, the zombie cannot renew its lease (L3), whatever its timers say.
      await zombie!.child.kill('SIGSTOP');
      try {
        const takeover = await afterLease(successor!, key);
        expect(executed(takeover)).toBe(true);
        expect(parse(takeover).pid).toBe(successor!.child.pid);

        await zombie!.child.kill('SIGCONT');
        await zombie!.child.send({ type: 'release', key });
        // The zombie's handler did run, and its client still gets that answer...
        const late = await first;
        expect(executed(late)).toBe(true);
        expect(parse(late).pid).toBe(zombie!.child.pid);
        // ...but the store refused its outcome (L4: stale token), which the engine reports as 'fenced'.
        let event: { type: string };
        do event = (await zombie!.child.next<{ type: 'event'; event: { type: string } }>('event')).event;
        while (event.type === 'store_error');
        expect(event.type).toBe('fenced');

        // The record is the successor's: a third process replays its body, not the zombie's.
        const replay = await post(witness!, key);
        expect(replay.headers['idempotent-replayed']).toBe('true');
        expect(replay.body).toBe(takeover.body);
        expect(replay.body).not.toBe(late.body);
        const ran = await executions([zombie!, successor!, witness!]);
        expect(ran.get(key)).toBe(2);
      } finally {
        await zombie!.child.kill('SIGCONT');
      }
    }, 60_000);
  });
}

describeCrashes('SqliteStore', true, sqliteEnv);
describeCrashes('RedisStore', redisUp, () => redisEnv());
describeCrashes('PostgresStore', postgresUp, () => postgresEnv());
