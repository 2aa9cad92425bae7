/**
 * S2 with real outages mid-traffic: while the store is unreachable every keyed request is answered
 * 503 `idempotency_store_unavailable` and no handler runs unprotected; once the store is back, the
 * very same processes serve again, without a restart.
 *
 * Redis: a private redis-server (never the shared one) killed and restarted on its port, or
 * blackholed behind a TCP proxy.
 * PostgreSQL: the shared server stays up; a TCP proxy in front of it is cut, or blackholed (a hung
 * store: only `storeTimeoutMs` answers the request), then restored.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killAll } from '../support/child.js';
import { PrivateRedis, redisServerInstalled } from '../support/redis-server.js';
import { POSTGRES_URL, serviceAvailable } from '../support/services.js';
import { TcpProxy } from '../support/tcp-proxy.js';
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
  startServers,
  until,
} from './_harness.js';

const STORE_TIMEOUT_MS = 1_000;
const LEASE_MS = 2_000;
/** Requests in flight at once during the traffic. */
const CONCURRENCY = 6;
/** How long a phase may take to show its effect before the test gives up with a summary. */
const PHASE_DEADLINE_MS = 30_000;

const redisInstalled = redisServerInstalled();
if (!redisInstalled) console.warn('\n!!! SKIPPED: the Redis outage suite needs redis-server on the PATH.\n');
const postgresUp = await serviceAvailable('postgres');

type Phase = 'before' | 'down' | 'after';

interface Sent {
  key: string;
  phase: Phase;
  reply?: Reply;
  error?: Error;
}

/** Keyed POSTs, one new key each, round-robin over the servers, until stopped. */
class Traffic {
  readonly sent: Sent[] = [];
  phase: Phase = 'before';
  #stopped = false;
  readonly #workers: Promise<void>[];
  readonly #waiters = new Set<() => void>();

  constructor(readonly servers: readonly Server[]) {
    this.#workers = Array.from({ length: CONCURRENCY }, () => this.#work());
  }

  async #work(): Promise<void> {
    while (!this.#stopped) {
      const entry: Sent = { key: newKey('outage'), phase: this.phase };
      this.sent.push(entry);
      const server = this.servers[this.sent.length % this.servers.length]!;
      try {
        entry.reply = await post(server, entry.key);
      } catch (error) {
        entry.error = error as Error;
      }
      for (const waiter of [...this.#waiters]) waiter();
    }
  }

  /** Resolves once `count` replies sent in `phase` have `status`. */
  reach(phase: Phase, status: number, count: number): Promise<void> {
    const done = () =>
      this.sent.filter((s) => s.phase === phase && s.reply?.status === status).length >= count;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(
          new Error(
            `no ${count} × ${status} in phase '${phase}' within ${PHASE_DEADLINE_MS} ms: ${this.summary()}`,
          ),
        );
      }, PHASE_DEADLINE_MS);
      const check = () => {
        if (!done()) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve();
      };
      this.#waiters.add(check);
      check();
    });
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#workers);
  }

  summary(): string {
    const tally = new Map<string, number>();
    for (const s of this.sent) {
      const label = `${s.phase}:${s.reply?.status ?? s.error?.message ?? 'pending'}`;
      tally.set(label, (tally.get(label) ?? 0) + 1);
    }
    return JSON.stringify(Object.fromEntries(tally));
  }
}

/**
 * Run traffic through an outage: `down()` takes the store away once requests succeed, `up()` brings it
 * back once requests get 503s; then check every answer against what the handlers did.
 */
async function outage(
  servers: readonly Server[],
  down: () => void | Promise<void>,
  up: () => void | Promise<void>,
): Promise<{ traffic: Traffic; unavailable: Sent[] }> {
  const pids = servers.map((s) => s.child.pid);
  const traffic = new Traffic(servers);
  try {
    await traffic.reach('before', 201, 20);
    traffic.phase = 'down';
    await down();
    await traffic.reach('down', 503, 10);
    traffic.phase = 'after';
    await up();
    // Recovery without a restart: fresh keys run again on the same processes.
    await traffic.reach('after', 201, 20);
  } finally {
    await traffic.stop();
  }
  expect(servers.map((s) => s.child.pid)).toEqual(pids);
  for (const server of servers) expect(server.child.process.exitCode).toBeNull();

  const ran = await executions(servers);
  const problems: string[] = [];
  const unavailable: Sent[] = [];
  for (const s of traffic.sent) {
    const times = ran.get(s.key) ?? 0;
    if (s.error !== undefined) problems.push(`${s.phase} ${s.key}: ${s.error.message}`);
    else if (s.reply!.status === 201) {
      if (times !== 1) problems.push(`${s.phase} ${s.key}: 201 but ran ${times} times`);
    } else if (s.reply!.status === 503) {
      unavailable.push(s);
      // S2: fail closed; the handler did not run for a request the store could not protect.
      if (times !== 0) problems.push(`${s.phase} ${s.key}: 503 but the handler ran ${times} times`);
      if (codeOf(s.reply!) !== 'idempotency_store_unavailable') problems.push(`${s.key}: ${s.reply!.body}`);
      if (s.reply!.headers['retry-after'] === undefined) problems.push(`${s.key}: 503 without Retry-After`);
    } else problems.push(`${s.phase} ${s.key}: unexpected ${s.reply!.status} ${s.reply!.body}`);
  }
  expect(problems).toEqual([]);
  console.info(`[outage] ${traffic.summary()}`);
  return { traffic, unavailable };
}

/**
 * S2 says "retry later with the same key": after recovery a retried 503 key runs exactly once. It may
 * first meet a 409, when the acquire that timed out reached the store after all (its lease then runs
 * out, L3).
 */
async function retryAfterRecovery(servers: readonly Server[], unavailable: readonly Sent[]): Promise<void> {
  const keys = unavailable.slice(0, 3).map((s) => s.key);
  for (const key of keys) {
    const reply = await until(
      async () => {
        const r = await post(servers[0]!, key);
        return r.status === 409 ? undefined : r;
      },
      LEASE_MS * 10,
      `${key} to run after recovery`,
    );
    expect(reply.status).toBe(201);
  }
  const ran = await executions(servers);
  for (const key of keys) expect(ran.get(key)).toBe(1);
}

describe.skipIf(!redisInstalled)(
  'outages of RedisStore (a private redis-server, killed and restarted)',
  () => {
    let redis: PrivateRedis | undefined;
    let env: StoreEnv | undefined;
    let servers: Server[] = [];

    beforeAll(async () => {
      redis = await PrivateRedis.start();
      env = redisEnv(redis.url);
      servers = await startServers(2, {
        ...env.config,
        storeTimeoutMs: STORE_TIMEOUT_MS,
        lockTimeoutMs: LEASE_MS,
      });
    }, 60_000);

    afterAll(async () => {
      dropAgents(servers);
      await killAll();
      await env?.cleanup();
      await redis?.kill();
    });

    it('S2: Redis killed mid-traffic → 503 idempotency_store_unavailable, no handler runs; restarted → the same processes serve again', async () => {
      const { unavailable } = await outage(
        servers,
        () => redis!.kill(),
        () => redis!.start(),
      );
      expect(unavailable.length).toBeGreaterThanOrEqual(10);
      await retryAfterRecovery(servers, unavailable);
    }, 90_000);
  },
);

describe.skipIf(!redisInstalled)(
  'outages of RedisStore (a private redis-server behind a blackholed TCP proxy)',
  () => {
    let redis: PrivateRedis | undefined;
    let proxy: TcpProxy | undefined;
    let env: StoreEnv | undefined;
    let servers: Server[] = [];

    beforeAll(async () => {
      redis = await PrivateRedis.start();
      proxy = await TcpProxy.start({ host: '127.0.0.1', port: redis.port });
      env = redisEnv(`redis://127.0.0.1:${proxy.port}`);
      servers = await startServers(2, {
        ...env.config,
        storeTimeoutMs: STORE_TIMEOUT_MS,
        lockTimeoutMs: LEASE_MS,
        events: ['store_error'],
      });
    }, 60_000);

    afterAll(async () => {
      dropAgents(servers);
      await killAll();
      await proxy?.close();
      await env?.cleanup();
      await redis?.kill();
    });

    it('S2: Redis blackholed (commands hang, no error) → 503 once storeTimeoutMs passes, no handler runs; restored → served again', async () => {
      const { unavailable } = await outage(
        servers,
        () => proxy!.blackhole(),
        () => proxy!.restore(),
      );
      expect(unavailable.length).toBeGreaterThanOrEqual(10);
      // ioredis has no command timeout of its own: only the engine's storeTimeoutMs answered.
      const names = servers.flatMap((s) =>
        s.child
          .drain<{ type: 'event'; event: { error?: { name: string } } }>('event')
          .map((m) => m.event.error?.name),
      );
      expect(names.filter((name) => name === 'StoreTimeoutError').length).toBeGreaterThanOrEqual(
        unavailable.length,
      );
      await retryAfterRecovery(servers, unavailable);
    }, 90_000);
  },
);

describe.skipIf(!postgresUp)('outages of PostgresStore (behind a cuttable TCP proxy)', () => {
  let proxy: TcpProxy | undefined;
  let env: StoreEnv | undefined;
  let servers: Server[] = [];

  beforeAll(async () => {
    const target = new URL(POSTGRES_URL);
    proxy = await TcpProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
    const through = new URL(POSTGRES_URL);
    through.hostname = '127.0.0.1';
    through.port = String(proxy.port);
    env = await postgresEnv(through.href, POSTGRES_URL);
    servers = await startServers(2, {
      ...env.config,
      storeTimeoutMs: STORE_TIMEOUT_MS,
      lockTimeoutMs: LEASE_MS,
      events: ['store_error'],
    });
  }, 60_000);

  afterAll(async () => {
    dropAgents(servers);
    await killAll();
    await proxy?.close();
    await env?.cleanup();
  });

  const storeErrors = () =>
    servers.flatMap((s) =>
      s.child
        .drain<{ type: 'event'; event: { error?: { name: string } } }>('event')
        .map((m) => m.event.error?.name),
    );

  it('S2: connections to PostgreSQL cut mid-traffic → 503, no handler runs; restored → the same processes reconnect and serve', async () => {
    storeErrors();
    const { unavailable } = await outage(
      servers,
      () => proxy!.cut(),
      () => proxy!.restore(),
    );
    expect(unavailable.length).toBeGreaterThanOrEqual(10);
    // The pool saw its connections fail: errors, not timeouts, answered these.
    expect(storeErrors().some((name) => name !== 'StoreTimeoutError')).toBe(true);
    await retryAfterRecovery(servers, unavailable);
  }, 90_000);

  it('S2: PostgreSQL blackholed (connections hang) → 503 once storeTimeoutMs passes, no handler runs; restored → served again', async () => {
    storeErrors();
    const { unavailable } = await outage(
      servers,
      () => proxy!.blackhole(),
      () => proxy!.restore(),
    );
    expect(unavailable.length).toBeGreaterThanOrEqual(10);
    // Nothing failed: the store hung, and only the engine's storeTimeoutMs produced the 503s.
    const names = storeErrors();
    expect(names.length).toBeGreaterThanOrEqual(unavailable.length);
    expect(names.filter((name) => name === 'StoreTimeoutError').length).toBeGreaterThanOrEqual(
      unavailable.length,
    );
    await retryAfterRecovery(servers, unavailable);
  }, 90_000);
});
