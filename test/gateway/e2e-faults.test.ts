/**
 * End to end under network faults: `createFetch` (oncely/client) → a fault-injecting TCP proxy →
 * the gateway → a counting upstream. Each fault hits one attempt of one operation, chosen by a
 * plan drawn from a seeded PRNG before the run, so a failing seed replays the same faults.
 */
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { finished } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFetch, type RetryInfo } from '../../src/client/index.js';
import { type RunningGateway, startGateway } from '../../src/gateway/server.js';
import { type Deferred, deferred } from './helpers.js';

/**
 * What the proxy does to one connection (one attempt: it forces `Connection: close`):
 * - `drop-request`: read the request head, then cut the client off; the gateway never sees it.
 * - `lose-response`: forward the request; cut both sides when the answer starts coming back, so the
 *   gateway and the upstream acted but the client never learns the outcome.
 * - `cut-in-flight`: forward the request; cut the client off as soon as the upstream starts on it
 *   (the gateway side stays open, so the gateway finishes and records); the retry finds it in flight.
 * - `pass`: forward both ways.
 */
type Fault = 'drop-request' | 'lose-response' | 'cut-in-flight' | 'pass';

/** mulberry32: a small seeded PRNG, so a run's faults can be replayed from its seed. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** The upstream: counts executions per Idempotency-Key and can hold one until the test lets it go. */
class CountingUpstream {
  readonly server: HttpServer;
  /** Executions per key (what "exactly once" is about). */
  readonly executions = new Map<string, number>();
  /** Operation ids (`x-op`) in the order the upstream ran them. */
  readonly ran: string[] = [];
  /** Called when an execution starts; the returned promise (if any) holds its response. */
  onStart: (op: string, key: string) => Promise<void> | undefined = () => undefined;

  constructor() {
    this.server = createHttpServer(async (req, res) => {
      // The operation is named by headers; the body only has to be read.
      req.resume();
      await finished(req);
      const key = String(req.headers['idempotency-key']);
      const op = String(req.headers['x-op']);
      const execution = this.ran.push(op);
      this.executions.set(key, (this.executions.get(key) ?? 0) + 1);
      await this.onStart(op, key);
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ op, key, execution }));
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** A TCP proxy that applies `plan(op, attempt)` to each connection, one request per connection. */
class FaultProxy {
  readonly server: Server;
  readonly #sockets = new Set<Socket>();
  /** Per operation: the Idempotency-Key each attempt carried, in order. */
  readonly keys = new Map<string, string[]>();
  readonly applied: Record<Fault, number> = {
    'drop-request': 0,
    'lose-response': 0,
    'cut-in-flight': 0,
    pass: 0,
  };
  /** Connections waiting to be cut when the upstream starts their operation. */
  readonly #cutOnStart = new Map<string, () => void>();

  constructor(
    readonly target: number,
    readonly plan: (op: string, attempt: number) => Fault,
  ) {
    this.server = createServer((client) => this.#accept(client));
  }

  /** The upstream started `op`: cut its `cut-in-flight` client off. True if one was cut. */
  upstreamStarted(op: string): boolean {
    const cut = this.#cutOnStart.get(op);
    this.#cutOnStart.delete(op);
    cut?.();
    return cut !== undefined;
  }

  #track(socket: Socket): Socket {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    socket.on('error', () => {});
    return socket;
  }

  #accept(client: Socket): void {
    this.#track(client);
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf('\r\n\r\n');
      if (end === -1) return;
      client.off('data', onData);
      client.pause();
      this.#route(client, buffered, end);
    };
    client.on('data', onData);
  }

  #route(client: Socket, buffered: Buffer, headEnd: number): void {
    const lines = buffered.subarray(0, headEnd).toString('latin1').split('\r\n');
    const header = (name: string) =>
      lines
        .find((line) => line.toLowerCase().startsWith(`${name}:`))
        ?.slice(name.length + 1)
        .trim();
    const op = header('x-op') ?? '?';
    const keys = this.keys.get(op) ?? [];
    keys.push(header('idempotency-key') ?? '');
    this.keys.set(op, keys);
    const fault = this.plan(op, keys.length);
    this.applied[fault]++;

    if (fault === 'drop-request') {
      client.destroy();
      return;
    }
    // One request per connection, so every attempt meets its own planned fault.
    const head = [...lines.filter((line) => !/^connection:/i.test(line)), 'connection: close'].join('\r\n');
    const gateway = this.#track(connect(this.target, '127.0.0.1'));
    gateway.write(head);
    gateway.write(buffered.subarray(headEnd));
    client.pipe(gateway, { end: false });
    client.resume();

    if (fault === 'pass') {
      gateway.pipe(client);
      return;
    }
    const cutBoth = () => {
      client.destroy();
      gateway.destroy();
    };
    if (fault === 'lose-response') {
      gateway.once('data', cutBoth);
      return;
    }
    // cut-in-flight: if the gateway answers first (a 409 or a replay: this attempt did not start
    // the upstream), that answer is lost instead.
    const answeredFirst = () => {
      this.#cutOnStart.delete(op);
      cutBoth();
    };
    this.#cutOnStart.set(op, () => {
      gateway.off('data', answeredFirst);
      client.unpipe(gateway);
      client.destroy();
      gateway.resume(); // the gateway side stays open and is drained: the gateway records the outcome
    });
    gateway.once('data', answeredFirst);
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

let upstream: CountingUpstream;
let gateway: RunningGateway;
let proxy: FaultProxy;
let proxyUrl: string;
/** The plan each test sets: op → fault per attempt (1-based); attempts past the list pass. */
let plans = new Map<string, Fault[]>();
/** Executions held until the client has seen a 409 for their key (set by `cut-in-flight`). */
const held = new Map<string, Deferred>();
const retries: Array<RetryInfo & { status: number | undefined }> = [];

const client = createFetch({
  retries: 30,
  baseDelayMs: 5,
  maxDelayMs: 20,
  // L2's `Retry-After: 1` is honoured but capped, so the run takes seconds, not minutes.
  maxRetryAfterMs: 10,
  onRetry: (info) => {
    retries.push({ ...info, status: info.response?.status });
    if (info.response?.status === 409 && info.key) held.get(info.key)?.resolve();
  },
});

function operation(op: string): Promise<Response> {
  return client(`${proxyUrl}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-op': op },
    body: JSON.stringify({ op }),
  });
}

beforeAll(async () => {
  upstream = new CountingUpstream();
  const upstreamUrl = await upstream.listen();
  gateway = await startGateway({ upstream: upstreamUrl, logLevel: 'silent' });
  proxy = new FaultProxy(Number(new URL(gateway.url).port), (op, attempt) => {
    return plans.get(op)?.[attempt - 1] ?? 'pass';
  });
  proxyUrl = await proxy.listen();
  upstream.onStart = (op, key) => {
    // An execution whose client was cut off is held until the client has seen the 409 a retry
    // gets while it is in flight (L2); a 409 is the only thing that releases it.
    if (!proxy.upstreamStarted(op)) return undefined;
    const release = deferred();
    held.set(key, release);
    return release.promise;
  };
});

afterAll(async () => {
  for (const release of held.values()) release.resolve();
  await proxy?.close();
  await gateway?.close();
  await upstream?.close();
});

describe('gateway + client under network faults', () => {
  it('C1, R6: a response lost after the upstream acted is retried with the same key and replayed; the upstream ran once', async () => {
    plans = new Map([['lost', ['lose-response']]]);
    retries.length = 0;
    const response = await operation('lost');

    expect(response.status).toBe(201);
    expect(response.headers.get('idempotent-replayed')).toBe('true');
    const body = await response.json();
    const keys = proxy.keys.get('lost')!;
    expect(keys).toHaveLength(2);
    expect(keys[1]).toBe(keys[0]);
    expect(body).toEqual({ op: 'lost', key: keys[0], execution: expect.any(Number) });
    expect(upstream.executions.get(keys[0]!)).toBe(1);
    // The one retry was for a network error, not a response.
    expect(retries.map((retry) => [retry.attempt, retry.status])).toEqual([[1, undefined]]);
  });

  it('C2, G1: a request dropped before the gateway saw it is retried and runs once, not replayed', async () => {
    plans = new Map([['dropped', ['drop-request', 'drop-request']]]);
    const response = await operation('dropped');

    expect(response.status).toBe(201);
    expect(response.headers.get('idempotent-replayed')).toBeNull();
    const keys = proxy.keys.get('dropped')!;
    expect(new Set(keys)).toEqual(new Set([keys[0]]));
    expect(keys).toHaveLength(3);
    expect(upstream.executions.get(keys[0]!)).toBe(1);
  });

  it('C2, L2: a retry while the first attempt is still upstream gets 409, waits, and then the replay', async () => {
    plans = new Map([['in-flight', ['cut-in-flight']]]);
    retries.length = 0;
    const response = await operation('in-flight');

    expect(response.status).toBe(201);
    expect(response.headers.get('idempotent-replayed')).toBe('true');
    const keys = proxy.keys.get('in-flight')!;
    expect(retries.map((retry) => retry.status)).toEqual([undefined, 409]);
    expect(keys).toHaveLength(3);
    expect(new Set(keys).size).toBe(1);
    expect(upstream.executions.get(keys[0]!)).toBe(1);
  });

  it('L5, C1, C2: 500 operations through random faults, 20 at a time, each run exactly once and answered 201', async () => {
    const seed = Number(process.env.ONCELY_FAULT_SEED ?? 20_240_611);
    const random = prng(seed);
    const OPERATIONS = 500;
    const CONCURRENCY = 20;
    const FAULTY_ATTEMPTS = 4;
    const faults: Fault[] = ['drop-request', 'lose-response', 'cut-in-flight'];
    plans = new Map();
    for (let i = 0; i < OPERATIONS; i++) {
      // Each of the first attempts is faulty with probability 1/2; later attempts pass, so every
      // operation can finish within the client's retry budget.
      const plan: Fault[] = [];
      for (let attempt = 0; attempt < FAULTY_ATTEMPTS; attempt++) {
        plan.push(random() < 0.5 ? faults[Math.floor(random() * faults.length)]! : 'pass');
      }
      plans.set(`op-${i}`, plan);
    }
    const before = { ...proxy.applied };
    const ranBefore = upstream.ran.length;
    retries.length = 0;

    const results = new Map<
      string,
      { status: number; replayed: boolean; body: { key: string; op: string } }
    >();
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < OPERATIONS) {
          const op = `op-${next++}`;
          const response = await operation(op);
          results.set(op, {
            status: response.status,
            replayed: response.headers.get('idempotent-replayed') === 'true',
            body: await response.json(),
          });
        }
      }),
    );
    const seconds = (performance.now() - started) / 1_000;

    // No losses: every operation got its own 201.
    expect(results.size).toBe(OPERATIONS);
    const ran = upstream.ran.slice(ranBefore);
    for (const [op, result] of results) {
      const keys = proxy.keys.get(op)!;
      expect(result.status, op).toBe(201);
      expect(result.body.op, op).toBe(op);
      // C1: one key per operation, on every attempt.
      expect(new Set(keys), op).toEqual(new Set([result.body.key]));
      // No duplicates: the upstream ran each operation's key exactly once.
      expect(upstream.executions.get(result.body.key), op).toBe(1);
    }
    expect(ran).toHaveLength(OPERATIONS);
    expect(new Set(ran).size).toBe(OPERATIONS);

    const applied = Object.fromEntries(
      Object.entries(proxy.applied).map(([fault, n]) => [fault, n - before[fault as Fault]]),
    );
    const conflicts = retries.filter((retry) => retry.status === 409).length;
    const replayed = [...results.values()].filter((result) => result.replayed).length;
    console.info(
      `e2e faults (seed ${seed}): ${OPERATIONS} operations, ${CONCURRENCY} at a time, in ${seconds.toFixed(1)} s; ` +
        `attempts ${JSON.stringify(applied)}; ${retries.length} retries (${conflicts} after a 409); ` +
        `${replayed} answered by a replay; upstream executions ${ran.length}`,
    );
    // Every fault kind happened, so each path above was exercised (the plan is fixed by the seed).
    for (const fault of faults) expect(applied[fault], fault).toBeGreaterThan(0);
    expect(conflicts).toBeGreaterThan(0);
  }, 120_000);
});
