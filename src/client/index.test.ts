import { readdirSync, readFileSync } from 'node:fs';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { withIdempotency } from '../adapters/node.js';
import { REPLAYED_HEADER as CORE_REPLAYED_HEADER } from '../core/engine.js';
import { KeyInUseError, KeyReusedError, MissingKeyError } from '../core/errors.js';
import { IDEMPOTENCY_KEY_HEADER as CORE_KEY_HEADER } from '../core/key.js';
import { MemoryStore } from '../stores/memory.js';
import { backoffDelay, parseRetryAfter, randomKey } from './_policy.js';
import {
  type ClientOptions,
  createFetch,
  IDEMPOTENCY_KEY_HEADER,
  KEY_IN_USE_CODE,
  REPLAYED_HEADER,
  type RetryInfo,
} from './index.js';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// --- a real HTTP server whose answer to each request is scripted in order -------------------------

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}
type Script = (req: IncomingMessage, res: ServerResponse) => void;

let server: Server;
let origin: string;
let seen: Seen[];
let scripts: Script[];

function reply(status: number, headers: Record<string, string> = {}, body = ''): Script {
  return (_req, res) => {
    res.writeHead(status, headers);
    res.end(body);
  };
}

function problem(
  error: { status: number; toProblem(): unknown },
  headers: Record<string, string> = {},
): Script {
  return reply(
    error.status,
    { 'content-type': 'application/problem+json', ...headers },
    JSON.stringify(error.toProblem()),
  );
}

/** Drop the connection without a response: fetch sees a network error. */
const dropConnection: Script = (req) => req.socket.destroy();

function deferred<T = void>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Never answer; resolves `closed` when the client gives up on the request. */
function hang(arrived: () => void, closed: () => void): Script {
  return (_req, res) => {
    res.on('close', closed);
    arrived();
  };
}

/** Script the next responses; requests past the script get 200 "ok". */
function serve(...next: Script[]): void {
  scripts = next;
}

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks) });
      (scripts.shift() ?? reply(200, {}, 'ok'))(req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

beforeEach(() => {
  seen = [];
  scripts = [];
});

/** A client with tiny deterministic backoff that records what it decided. */
function client(options: ClientOptions = {}) {
  const retries: RetryInfo[] = [];
  const fetch = createFetch({
    baseDelayMs: 1,
    maxDelayMs: 4,
    random: () => 0.5,
    ...options,
    onRetry: async (info) => {
      retries.push(info);
      await options.onRetry?.(info);
    },
  });
  return { fetch, retries };
}

const keysSeen = () => seen.map((request) => request.headers['idempotency-key']);

describe('oncely/client createFetch', () => {
  it('C1: sends one UUID v4 key on a POST and the same key on every retry', async () => {
    serve(reply(503), reply(502), reply(201, {}, 'created'));
    const { fetch, retries } = client();
    const res = await fetch(`${origin}/payments`, { method: 'POST', body: '{"amount":1}' });
    expect(res.status).toBe(201);
    expect(await res.text()).toBe('created');
    expect(seen).toHaveLength(3);
    const [key] = keysSeen();
    expect(key).toMatch(UUID_V4);
    expect(keysSeen()).toEqual([key, key, key]);
    expect(retries.map((r) => r.key)).toEqual([key, key]);
    expect(seen.map((r) => r.body.toString())).toEqual(Array(3).fill('{"amount":1}'));
  });

  it('C1: a fresh key for each call, also on PATCH', async () => {
    const { fetch } = client();
    await fetch(`${origin}/a`, { method: 'POST', body: 'x' });
    await fetch(`${origin}/a`, { method: 'POST', body: 'x' });
    await fetch(`${origin}/a`, { method: 'PATCH', body: 'x' });
    const keys = keysSeen();
    expect(keys).toHaveLength(3);
    for (const key of keys) expect(key).toMatch(UUID_V4);
    expect(new Set(keys).size).toBe(3);
  });

  it('C1: builds a UUID v4 from getRandomValues where randomUUID is missing (plain-http pages)', () => {
    const crypto = globalThis.crypto;
    Object.defineProperty(crypto, 'randomUUID', { value: undefined, configurable: true });
    try {
      const keys = [randomKey(), randomKey()];
      for (const key of keys) expect(key).toMatch(UUID_V4);
      expect(keys[0]).not.toBe(keys[1]);
    } finally {
      delete (crypto as { randomUUID?: unknown }).randomUUID;
    }
    expect(randomKey()).toMatch(UUID_V4);
  });

  it("C1: keeps the caller's own Idempotency-Key on every retry", async () => {
    serve(reply(503));
    const { fetch } = client();
    await fetch(`${origin}/a`, {
      method: 'POST',
      headers: { 'Idempotency-Key': 'order-12345678' },
      body: 'x',
    });
    expect(keysSeen()).toEqual(['order-12345678', 'order-12345678']);
  });

  it('C1: re-sends a Request input with its key, headers and body on retry', async () => {
    serve(reply(429));
    const { fetch } = client();
    const request = new Request(`${origin}/r?q=1`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-trace': 't1' },
      body: '{"a":1}',
    });
    const res = await fetch(request);
    expect(res.status).toBe(200);
    expect(seen).toHaveLength(2);
    for (const request of seen) {
      expect(request.url).toBe('/r?q=1');
      expect(request.headers['content-type']).toBe('application/json');
      expect(request.headers['x-trace']).toBe('t1');
      expect(request.body.toString()).toBe('{"a":1}');
    }
    expect(keysSeen()[0]).toMatch(UUID_V4);
    expect(keysSeen()[1]).toBe(keysSeen()[0]);
  });

  const form = new FormData();
  form.set('name', 'ada');
  form.set('file', new Blob(['bytes'], { type: 'text/plain' }), 'a.txt');
  it.each<[string, () => BodyInit]>([
    ['string', () => 'plain text'],
    ['Uint8Array', () => new Uint8Array([0, 1, 2, 255])],
    ['ArrayBuffer', () => new Uint8Array([9, 8, 7]).buffer],
    ['URLSearchParams', () => new URLSearchParams({ a: '1', b: 'two' })],
    ['Blob', () => new Blob(['blob body'], { type: 'application/octet-stream' })],
    ['FormData', () => form],
  ])('C1: re-sends a %s body byte for byte on retry', async (_name, body) => {
    serve(reply(503));
    const { fetch } = client();
    await fetch(`${origin}/b`, { method: 'POST', body: body() });
    expect(seen).toHaveLength(2);
    expect(seen[0]!.body.length).toBeGreaterThan(0);
    expect(seen[1]!.body).toEqual(seen[0]!.body);
    expect(seen[1]!.headers['content-type']).toBe(seen[0]!.headers['content-type']);
  });

  it.each([408, 429, 502, 503, 504])('C2: retries a %i', async (status) => {
    serve(reply(status));
    const { fetch, retries } = client();
    const res = await fetch(`${origin}/s`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    expect(seen).toHaveLength(2);
    expect(retries).toHaveLength(1);
    expect(retries[0]!.response!.status).toBe(status);
    expect(retries[0]!.attempt).toBe(1);
  });

  it('C2: cancels the body of a response it retries past, freeing the connection', async () => {
    const closed = deferred();
    // A 503 whose body never ends: only the client cancelling it closes the exchange.
    serve((_req, res) => {
      res.on('close', closed.resolve);
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.write('partial');
    });
    const { fetch } = client();
    const res = await fetch(`${origin}/d`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    await closed.promise;
  });

  it('C2: retries a network error with the same key', async () => {
    serve(dropConnection);
    const { fetch, retries } = client();
    const res = await fetch(`${origin}/n`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    expect(seen).toHaveLength(2);
    expect(retries[0]!.error).toBeInstanceOf(TypeError);
    expect(keysSeen()[1]).toBe(keysSeen()[0]);
  });

  it('C2: waits the Retry-After seconds', async () => {
    serve(reply(503, { 'retry-after': '1' }));
    const { fetch, retries } = client();
    const res = await fetch(`${origin}/ra`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    expect(retries.map((r) => r.delayMs)).toEqual([1000]);
  });

  it('C2: caps Retry-After (seconds or HTTP date) at maxRetryAfterMs', async () => {
    const inAnHour = new Date(Date.now() + 3_600_000).toUTCString();
    serve(reply(429, { 'retry-after': '3600' }), reply(503, { 'retry-after': inAnHour }));
    const { fetch, retries } = client({ maxRetryAfterMs: 7 });
    const res = await fetch(`${origin}/ra`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    expect(retries.map((r) => r.delayMs)).toEqual([7, 7]);
  });

  it('C2: parses Retry-After as delay-seconds or an HTTP date', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    expect(parseRetryAfter('2', now)).toBe(2000);
    expect(parseRetryAfter(' 0 ', now)).toBe(0);
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Tue, 31 Dec 2024 23:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter('-1', now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });

  it('C2: capped exponential backoff with full jitter', () => {
    // ceiling = min(max, base · 2^(retry−1)); the delay is a uniform pick below it.
    expect([1, 2, 3, 4, 5].map((retry) => backoffDelay(retry, 100, 1000, 0.5))).toEqual([
      50, 100, 200, 400, 500,
    ]);
    expect(backoffDelay(3, 100, 1000, 0)).toBe(0);
    expect(backoffDelay(3, 100, 1000, 0.999)).toBe(399);
    expect(backoffDelay(60, 100, 1000, 0.5)).toBe(500);
  });

  it('C2: without Retry-After, waits the jittered backoff; out of retries, returns the last response', async () => {
    serve(reply(503), reply(503), reply(503), reply(503), reply(504, {}, 'last'));
    const { fetch, retries } = client({ retries: 4, baseDelayMs: 8, maxDelayMs: 20, random: () => 0.5 });
    const res = await fetch(`${origin}/b`, { method: 'POST', body: 'x' });
    expect(retries.map((r) => r.delayMs)).toEqual([4, 8, 10, 10]);
    expect(seen).toHaveLength(5);
    expect(res.status).toBe(504);
    expect(await res.text()).toBe('last');
  });

  it('C2: out of retries on network errors, throws the last error', async () => {
    serve(dropConnection, dropConnection, dropConnection);
    const { fetch, retries } = client({ retries: 2 });
    await expect(fetch(`${origin}/n`, { method: 'POST', body: 'x' })).rejects.toBeInstanceOf(TypeError);
    expect(seen).toHaveLength(3);
    expect(retries).toHaveLength(2);
  });

  it('C2: makes no retry whose wait would end past maxElapsedMs', async () => {
    serve(reply(503, { 'retry-after': '60' }));
    const { fetch, retries } = client({ maxElapsedMs: 5_000, maxRetryAfterMs: 60_000 });
    const res = await fetch(`${origin}/e`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(503);
    expect(seen).toHaveLength(1);
    expect(retries).toHaveLength(0);
  });

  it('C2: retries a 409 idempotency_key_in_use, honouring its Retry-After', async () => {
    serve(problem(new KeyInUseError(), { 'retry-after': '1' }));
    const { fetch, retries } = client({ maxRetryAfterMs: 3 });
    const res = await fetch(`${origin}/c`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(200);
    expect(seen).toHaveLength(2);
    expect(retries.map((r) => r.delayMs)).toEqual([3]);
  });

  it('C2: returns a 409 without the in-use code as it is', async () => {
    serve(reply(409, { 'content-type': 'application/json' }, '{"code":"duplicate_email"}'));
    const { fetch } = client();
    const res = await fetch(`${origin}/c`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(409);
    expect(await res.json()).toEqual({ code: 'duplicate_email' });
    expect(seen).toHaveLength(1);
  });

  it.each<[string, Script]>([
    ['400 idempotency_key_missing', problem(new MissingKeyError('POST'))],
    ['422 idempotency_key_reused', problem(new KeyReusedError())],
    ['400 without a problem body', reply(400)],
    ['500', reply(500)],
  ])('C2: never retries a %s', async (_name, script) => {
    serve(script, reply(200));
    const { fetch, retries } = client();
    const res = await fetch(`${origin}/x`, { method: 'POST', body: 'x' });
    expect(res.status).not.toBe(200);
    expect(seen).toHaveLength(1);
    expect(retries).toHaveLength(0);
  });

  it.each([502, 503, 504, 409])('C2: never retries a replayed %i', async (status) => {
    const script =
      status === 409
        ? problem(new KeyInUseError(), { 'idempotent-replayed': 'true' })
        : reply(status, { 'Idempotent-Replayed': 'true' }, 'recorded');
    serve(script, reply(200));
    const { fetch } = client();
    const res = await fetch(`${origin}/x`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(status);
    expect(seen).toHaveLength(1);
  });

  it('C2: a per-attempt timeout aborts a hung attempt and retries it with the same key', async () => {
    const arrived = deferred();
    const closed = deferred();
    serve(hang(arrived.resolve, closed.resolve), reply(201));
    const { fetch, retries } = client({ attemptTimeoutMs: 500 });
    const res = await fetch(`${origin}/t`, { method: 'POST', body: 'x' });
    expect(res.status).toBe(201);
    await closed.promise; // the hung request was really abandoned, not left open
    expect(retries).toHaveLength(1);
    expect((retries[0]!.error as Error).name).toBe('TimeoutError');
    expect(seen).toHaveLength(2);
    expect(keysSeen()[1]).toBe(keysSeen()[0]);
  });

  it('C2: a timeout on the last attempt rejects with the TimeoutError', async () => {
    const closed = deferred();
    serve(hang(() => {}, closed.resolve));
    const { fetch } = client({ retries: 0, attemptTimeoutMs: 50 });
    await expect(fetch(`${origin}/t`, { method: 'POST', body: 'x' })).rejects.toMatchObject({
      name: 'TimeoutError',
    });
    await closed.promise;
  });

  it("C2: the caller's abort during a backoff wait stops at once with the caller's reason", async () => {
    serve(reply(503, { 'retry-after': '600' }));
    const controller = new AbortController();
    const reason = new Error('user cancelled');
    const waiting = deferred();
    const { fetch } = client({ maxRetryAfterMs: 600_000, onRetry: () => waiting.resolve() });
    const call = fetch(`${origin}/w`, { method: 'POST', body: 'x', signal: controller.signal });
    await waiting.promise;
    controller.abort(reason);
    await expect(call).rejects.toBe(reason);
    expect(seen).toHaveLength(1);
  });

  it("C2: the caller's abort during an attempt rejects with the caller's reason and is not retried", async () => {
    const arrived = deferred();
    const closed = deferred();
    serve(hang(arrived.resolve, closed.resolve));
    const controller = new AbortController();
    const reason = new Error('navigated away');
    const { fetch, retries } = client();
    const call = fetch(new Request(`${origin}/w`, { method: 'POST', body: 'x', signal: controller.signal }));
    await arrived.promise;
    controller.abort(reason);
    await expect(call).rejects.toBe(reason);
    await closed.promise;
    expect(seen).toHaveLength(1);
    expect(retries).toHaveLength(0);
  });

  it('C2: an already aborted signal sends nothing', async () => {
    const { fetch } = client();
    const signal = AbortSignal.abort(new Error('too late'));
    await expect(fetch(`${origin}/w`, { method: 'POST', body: 'x', signal })).rejects.toThrow('too late');
    expect(seen).toHaveLength(0);
  });

  it('C2: onRetry throwing stops retrying with that error', async () => {
    serve(reply(503));
    const veto = new Error('no more');
    const { fetch } = client({
      onRetry: () => {
        throw veto;
      },
    });
    await expect(fetch(`${origin}/v`, { method: 'POST', body: 'x' })).rejects.toBe(veto);
    expect(seen).toHaveLength(1);
  });

  it.each(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'])(
    'C3: sends no key on %s, yet retries it',
    async (method) => {
      serve(reply(503));
      const { fetch } = client();
      const res = await fetch(`${origin}/m`, { method, ...(method === 'PUT' ? { body: 'x' } : {}) });
      expect(res.status).toBe(200);
      expect(seen.map((r) => r.method)).toEqual([method, method]);
      expect(keysSeen()).toEqual([undefined, undefined]);
    },
  );

  it('C3: a method outside `methods` gets no key and, not being idempotent, is sent once', async () => {
    serve(reply(503), reply(503));
    const { fetch } = client({ methods: ['POST'] });
    const patch = await fetch(`${origin}/m`, { method: 'PATCH', body: 'x' });
    expect(patch.status).toBe(503);
    expect(seen).toHaveLength(1);
    expect(keysSeen()).toEqual([undefined]);
    const post = await fetch(`${origin}/m`, { method: 'post', body: 'x' });
    expect(post.status).toBe(200);
    expect(keysSeen()[1]).toMatch(UUID_V4);
  });

  it('C2: refuses a ReadableStream body up front, naming the fix', async () => {
    const { fetch } = client();
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('chunk'));
        controller.close();
      },
    });
    const init = { method: 'POST', body, duplex: 'half' } as RequestInit;
    await expect(fetch(`${origin}/s`, init)).rejects.toThrow(
      /ReadableStream body cannot be retried.*Pass the body as a string, ArrayBuffer/,
    );
    expect(seen).toHaveLength(0);
  });

  it('C1: with retries: 0 a stream body is allowed: sent once, keyed', async () => {
    serve(reply(503));
    const { fetch } = client({ retries: 0 });
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('streamed'));
        controller.close();
      },
    });
    const res = await fetch(`${origin}/s`, { method: 'POST', body, duplex: 'half' } as RequestInit);
    expect(res.status).toBe(503);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.body.toString()).toBe('streamed');
    expect(keysSeen()[0]).toMatch(UUID_V4);
  });

  it.each<[string, ClientOptions]>([
    ['retries', { retries: -1 }],
    ['retries', { retries: 1.5 }],
    ['baseDelayMs', { baseDelayMs: -5 }],
    ['maxDelayMs', { maxDelayMs: Number.NaN }],
    ['maxRetryAfterMs', { maxRetryAfterMs: 2 ** 40 }],
    ['attemptTimeoutMs', { attemptTimeoutMs: 0 }],
    ['maxElapsedMs', { maxElapsedMs: -1 }],
    ['methods', { methods: ['PO ST'] }],
    ['methods', { methods: 'POST' as unknown as string[] }],
    ['fetch', { fetch: 'fetch' as unknown as ClientOptions['fetch'] }],
    ['random', { random: 0.5 as unknown as () => number }],
    ['onRetry', { onRetry: true as unknown as ClientOptions['onRetry'] }],
  ])('rejects a bad options.%s at construction', (name, options) => {
    expect(() => createFetch(options)).toThrow(`options.${name}`);
  });

  it('shares its header names and problem code with the server core', () => {
    expect(IDEMPOTENCY_KEY_HEADER).toBe(CORE_KEY_HEADER);
    expect(REPLAYED_HEADER).toBe(CORE_REPLAYED_HEADER);
    expect(KEY_IN_USE_CODE).toBe(new KeyInUseError().code);
  });

  it('runs in browsers: no node: imports, Buffer or process, and nothing imported from outside src/client', () => {
    const dir = fileURLToPath(new URL('.', import.meta.url));
    const files = readdirSync(dir).filter((name) => name.endsWith('.ts') && !name.endsWith('.test.ts'));
    expect(files).toContain('index.ts');
    for (const name of files) {
      // Comments (JSDoc examples) may name other modules; only code counts.
      const source = readFileSync(`${dir}${name}`, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
      expect(source, name).not.toMatch(/from\s+['"]node:|import\(\s*['"]node:|require\(/);
      expect(source, name).not.toMatch(/\bBuffer\b|\bprocess\./);
      for (const [, specifier] of source.matchAll(/from\s+['"]([^'"]+)['"]/g)) {
        expect(specifier, name).toMatch(/^\.\/_?[\w-]+\.js$/);
      }
    }
  });
});

describe('oncely/client with an oncely server', () => {
  it('C2/L2: waits out the in-flight 409 and gets the replay of the one execution', async () => {
    let executions = 0;
    const release = deferred();
    const started = deferred();
    const store = new MemoryStore();
    const app = createServer(
      withIdempotency(
        async (_req, res) => {
          executions++;
          started.resolve();
          await release.promise;
          res.writeHead(201, { 'content-type': 'application/json' });
          res.end('{"id":1}');
        },
        { store },
      ),
    );
    await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(app.address() as AddressInfo).port}/orders`;
    try {
      const headers = { 'Idempotency-Key': 'order-0000001', 'content-type': 'application/json' };
      const first = createFetch()(url, { method: 'POST', headers, body: '{"n":1}' });
      await started.promise;
      const { fetch, retries } = client({
        maxRetryAfterMs: 1,
        // Once the duplicate has seen its 409, let the first request finish, and retry after it has.
        onRetry: async () => {
          release.resolve();
          await first;
        },
      });
      const second = await fetch(url, { method: 'POST', headers, body: '{"n":1}' });
      expect((await first).status).toBe(201);
      expect(retries[0]!.response!.status).toBe(409);
      expect(second.status).toBe(201);
      expect(second.headers.get('idempotent-replayed')).toBe('true');
      expect(await second.text()).toBe('{"id":1}');
      expect(executions).toBe(1);
    } finally {
      app.closeAllConnections();
      await new Promise((resolve) => app.close(resolve));
      await store.close();
    }
  });
});
