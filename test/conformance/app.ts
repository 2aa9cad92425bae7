/**
 * The application every adapter serves in the conformance suite: a table of routes with known
 * behaviour, written once, which each adapter's fixture translates into its framework's idiom.
 */
import { gzipSync } from 'node:zlib';

/** A request as a fixture hands it to the app (the body as the handler read it). */
export interface AppRequest {
  method: string;
  /** Path with query. */
  url: string;
  headers: Record<string, string | undefined>;
  body: Uint8Array;
}

/** What the fixture must send. `chunks`, when present, is streamed in order (and may throw midway). */
export interface AppReply {
  status: number;
  headers: Record<string, string | string[]>;
  body?: Uint8Array;
  chunks?: AsyncIterable<Uint8Array>;
}

interface Hold {
  entered: Promise<void>;
  release: () => void;
}

/** A deferred promise. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

const text = (s: string) => new TextEncoder().encode(s);

/**
 * Routes (any method):
 * - `/echo`: 201 JSON `{ n, method, url, body, contentType }` + `x-execution: n`, `set-cookie`.
 * - `/status/:code`: that status with a small JSON body.
 * - `/binary`: 200, every byte value, `application/octet-stream`.
 * - `/empty`: 204, no body.
 * - `/created`: 201 with `Location: /payments/pay_1`.
 * - `/gzip`: 200 gzip-encoded JSON with `Content-Encoding: gzip`.
 * - `/multi`: 200 with a repeated header `x-multi: a`, `x-multi: b`.
 * - `/big?bytes=N`: 200 with N bytes, streamed in 16 KiB chunks.
 * - `/sse`: 200 `text/event-stream`, three events.
 * - `/throw`: the handler throws.
 * - `/stream-fail`: writes a first chunk, then the stream fails.
 * - `/hold`: the n-th execution waits until `app.hold(n)` is released (signals `entered` first).
 */
export class ConformanceApp {
  /** Handler executions, all routes together. */
  executions = 0;
  readonly #holds = new Map<number, Hold & { resolveEntered: () => void; released: Promise<void> }>();

  /** Make the `n`-th execution (1-based, counted from now on across routes) of `/hold` wait. */
  hold(n = this.executions + 1): Hold {
    const entered = deferred();
    const released = deferred();
    const hold = {
      entered: entered.promise,
      release: () => released.resolve(),
      resolveEntered: () => entered.resolve(),
      released: released.promise,
    };
    this.#holds.set(n, hold);
    return hold;
  }

  async handle(request: AppRequest): Promise<AppReply> {
    const n = ++this.executions;
    const url = new URL(request.url, 'http://x');
    const route = url.pathname;
    if (route === '/echo') {
      const body = JSON.stringify({
        n,
        method: request.method,
        url: request.url,
        body: new TextDecoder().decode(request.body),
        contentType: request.headers['content-type'] ?? null,
      });
      return {
        status: 201,
        headers: {
          'content-type': 'application/json',
          'x-execution': String(n),
          'set-cookie': `session=${n}`,
        },
        body: text(body),
      };
    }
    if (route.startsWith('/status/')) {
      const status = Number(route.slice('/status/'.length));
      return {
        status,
        headers: { 'content-type': 'application/json', 'x-execution': String(n) },
        body: text(`{"n":${n}}`),
      };
    }
    if (route === '/binary') {
      return {
        status: 200,
        headers: { 'content-type': 'application/octet-stream' },
        body: new Uint8Array(256).map((_, i) => i),
      };
    }
    if (route === '/empty') return { status: 204, headers: { 'x-execution': String(n) } };
    if (route === '/created') {
      return {
        status: 201,
        headers: { 'content-type': 'application/json', location: '/payments/pay_1' },
        body: text(`{"id":"pay_1","n":${n}}`),
      };
    }
    if (route === '/gzip') {
      return {
        status: 200,
        headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
        body: new Uint8Array(gzipSync(`{"compressed":true,"n":${n}}`)),
      };
    }
    if (route === '/multi') {
      return {
        status: 200,
        headers: { 'content-type': 'text/plain', 'x-multi': ['a', 'b'] },
        body: text('multi'),
      };
    }
    if (route === '/big') {
      const bytes = Number(url.searchParams.get('bytes') ?? 65536);
      return { status: 200, headers: { 'content-type': 'application/octet-stream' }, chunks: bigBody(bytes) };
    }
    if (route === '/sse') {
      return {
        status: 200,
        headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
        chunks: events(n),
      };
    }
    if (route === '/throw') throw new Error(`handler failed on execution ${n}`);
    if (route === '/stream-fail') {
      return { status: 200, headers: { 'content-type': 'text/plain' }, chunks: failingBody() };
    }
    if (route === '/hold') {
      const hold = this.#holds.get(n);
      if (hold) {
        hold.resolveEntered();
        await hold.released;
      }
      return {
        status: 201,
        headers: { 'content-type': 'application/json' },
        body: text(`{"held":true,"n":${n}}`),
      };
    }
    return { status: 404, headers: { 'content-type': 'text/plain' }, body: text('not found') };
  }
}

async function* bigBody(bytes: number): AsyncIterable<Uint8Array> {
  const chunk = 16_384;
  for (let sent = 0; sent < bytes; sent += chunk) {
    yield new Uint8Array(Math.min(chunk, bytes - sent)).fill(97 + ((sent / chunk) % 26));
  }
}

async function* events(n: number): AsyncIterable<Uint8Array> {
  for (let i = 1; i <= 3; i++) yield text(`id: ${i}\ndata: {"n":${n},"event":${i}}\n\n`);
}

async function* failingBody(): AsyncIterable<Uint8Array> {
  yield text('partial ');
  throw new Error('stream failed midway');
}

/** What a fixture returns: where it listens, and how to stop it. */
export interface RunningServer {
  url: string;
  close(): Promise<void>;
}

/**
 * An adapter under test: serve `app` over a real socket with oncely mounted with `options`.
 * For `/throw`, the error must reach the framework's own error handling (R3).
 */
export interface ConformanceFixture {
  name: string;
  start(
    app: ConformanceApp,
    options: import('../../src/core/options.js').IdempotencyOptions,
  ): Promise<RunningServer>;
}
