import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { deferred } from '../../test/conformance/app.js';
import { Engine } from '../core/engine.js';
import type { Store } from '../core/store.js';
import { MemoryStore } from '../stores/memory.js';
import { type FastifyIdempotencyOptions, idempotency } from './fastify.js';

let app: FastifyInstance;
let runs = 0;

async function build(
  options: FastifyIdempotencyOptions = {},
  routes: (app: FastifyInstance) => void = () => {},
): Promise<FastifyInstance> {
  runs = 0;
  app = Fastify();
  await app.register(idempotency, options);
  routes(app);
  await app.ready();
  return app;
}

const keyed = (key: string, extra: Record<string, string> = {}) => ({ 'idempotency-key': key, ...extra });

async function twice(url: string, key = 'key-00000001', payload: unknown = { amount: 1 }) {
  const first = await app.inject({ method: 'POST', url, headers: keyed(key), payload: payload as object });
  const second = await app.inject({ method: 'POST', url, headers: keyed(key), payload: payload as object });
  return { first, second };
}

afterEach(async () => {
  await app?.close();
});

describe('oncely/fastify capture', () => {
  it('R1, R2: a string payload is recorded and replayed with its headers', async () => {
    await build({}, (a) =>
      a.post('/s', async (_req, reply) => {
        runs++;
        return reply.code(201).header('x-run', String(runs)).type('text/plain').send(`run ${runs}`);
      }),
    );
    const { first, second } = await twice('/s');
    expect(first.statusCode).toBe(201);
    expect(second.statusCode).toBe(201);
    expect(second.body).toBe('run 1');
    expect(second.headers['x-run']).toBe('1');
    expect(second.headers['content-type']).toBe(first.headers['content-type']);
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(runs).toBe(1);
  });

  it('R5: a Buffer payload is replayed byte for byte', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await build({}, (a) =>
      a.post('/b', async (_req, reply) => {
        runs++;
        return reply.send(bytes);
      }),
    );
    const { first, second } = await twice('/b');
    expect(first.rawPayload.equals(bytes)).toBe(true);
    expect(second.rawPayload.equals(bytes)).toBe(true);
    expect(second.headers['content-type']).toBe('application/octet-stream');
    expect(runs).toBe(1);
  });

  it('R1: an object payload is recorded as Fastify serialised it, and the handler still gets the parsed body', async () => {
    const seen: unknown[] = [];
    await build({}, (a) =>
      a.post('/o', async (req) => {
        runs++;
        seen.push(req.body);
        return { id: 'pay_1', runs, body: req.body };
      }),
    );
    const { first, second } = await twice('/o', 'key-00000001', { amount: 42 });
    expect(seen).toEqual([{ amount: 42 }]);
    expect(first.json()).toEqual({ id: 'pay_1', runs: 1, body: { amount: 42 } });
    expect(second.body).toBe(first.body);
    expect(second.headers['content-type']).toBe('application/json; charset=utf-8');
  });

  it('R1: a node stream payload is buffered, recorded and replayed', async () => {
    await build({}, (a) =>
      a.post('/stream', async (_req, reply) => {
        runs++;
        return reply.type('text/plain').send(Readable.from([Buffer.from('a'), Buffer.from('b'), 'c']));
      }),
    );
    const { first, second } = await twice('/stream');
    expect(first.body).toBe('abc');
    expect(second.body).toBe('abc');
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('R1: a web ReadableStream payload is buffered, recorded and replayed', async () => {
    await build({}, (a) =>
      a.post('/web', async (_req, reply) => {
        runs++;
        const stream = new ReadableStream<Uint8Array>({
          start(controller) {
            controller.enqueue(new TextEncoder().encode('web '));
            controller.enqueue(new TextEncoder().encode('stream'));
            controller.close();
          },
        });
        return reply.type('text/plain').send(stream);
      }),
    );
    const { first, second } = await twice('/web');
    expect(first.body).toBe('web stream');
    expect(second.body).toBe('web stream');
    expect(runs).toBe(1);
  });

  it('R3: an error thrown by the handler is recorded as what the error handler sends', async () => {
    await build({}, (a) => {
      a.setErrorHandler((error: Error, _req, reply) => {
        reply.code(418).send({ handled: error.message });
      });
      a.post('/throw', async () => {
        runs++;
        throw new Error(`boom ${runs}`);
      });
    });
    const { first, second } = await twice('/throw');
    expect(first.statusCode).toBe(418);
    expect(first.json()).toEqual({ handled: 'boom 1' });
    expect(second.statusCode).toBe(418);
    expect(second.body).toBe(first.body);
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it("R3: with Fastify's default error handler the 500 it sends is recorded", async () => {
    await build({}, (a) =>
      a.post('/throw', async () => {
        runs++;
        throw new Error('boom');
      }),
    );
    const { first, second } = await twice('/throw');
    expect(first.statusCode).toBe(500);
    expect(first.json()).toMatchObject({ statusCode: 500, message: 'boom' });
    expect(second.statusCode).toBe(500);
    expect(second.body).toBe(first.body);
    expect(runs).toBe(1);
  });

  it('R3: a stream that fails midway records and sends a 500 problem', async () => {
    await build({}, (a) =>
      a.post('/fail', async (_req, reply) => {
        runs++;
        async function* failing() {
          yield Buffer.from('partial');
          throw new Error('midway');
        }
        return reply.type('text/plain').send(Readable.from(failing()));
      }),
    );
    const { first, second } = await twice('/fail');
    expect(first.statusCode).toBe(500);
    expect(first.headers['content-type']).toBe('application/problem+json');
    expect(second.statusCode).toBe(500);
    expect(second.body).toBe(first.body);
    expect(runs).toBe(1);
  });

  it('R7: a response over maxResponseBytes reaches the first caller whole; the replay omits the body', async () => {
    await build({ maxResponseBytes: 1024 }, (a) =>
      a.post('/big', async (_req, reply) => {
        runs++;
        const chunks = Array.from({ length: 8 }, () => Buffer.alloc(512, 97));
        return reply.type('application/octet-stream').send(Readable.from(chunks));
      }),
    );
    const { first, second } = await twice('/big');
    expect(first.rawPayload.byteLength).toBe(4096);
    expect(second.statusCode).toBe(200);
    expect(second.rawPayload.byteLength).toBe(0);
    expect(second.headers['idempotent-body-omitted']).toBe('true');
    expect(runs).toBe(1);
  });

  it('R7: a keyed body over maxRequestBytes is answered 413 before the handler runs', async () => {
    await build({ maxRequestBytes: 16 }, (a) =>
      a.post('/o', async () => {
        runs++;
        return { ok: true };
      }),
    );
    const response = await app.inject({
      method: 'POST',
      url: '/o',
      headers: keyed('key-00000001'),
      payload: { text: 'x'.repeat(64) },
    });
    expect(response.statusCode).toBe(413);
    expect(response.json().code).toBe('request_too_large');
    expect(runs).toBe(0);
  });

  it('F1, F2: the fingerprint covers the raw body bytes, so a different body with the same key gets 422', async () => {
    await build({}, (a) =>
      a.post('/o', async () => {
        runs++;
        return { ok: true };
      }),
    );
    await app.inject({ method: 'POST', url: '/o', headers: keyed('key-00000001'), payload: { a: 1 } });
    const reused = await app.inject({
      method: 'POST',
      url: '/o',
      headers: keyed('key-00000001', { 'content-type': 'application/json' }),
      payload: '{ "a": 1 }',
    });
    expect(reused.statusCode).toBe(422);
    expect(reused.json().code).toBe('idempotency_key_reused');
    expect(runs).toBe(1);
  });

  it('F1: over a socket, a small body is peeked at in place: Fastify parses the request stream itself', async () => {
    const parsed: Array<{ own: boolean; text: string }> = [];
    await build({}, (a) => {
      a.addContentTypeParser('application/json', (request, payload, done) => {
        const chunks: Buffer[] = [];
        payload.on('data', (chunk: Buffer) => chunks.push(chunk));
        payload.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          // The request's own stream, not a copy of bytes oncely read off it.
          parsed.push({ own: payload === request.raw, text });
          done(null, JSON.parse(text));
        });
      });
      a.post('/o', async (req) => {
        runs++;
        return { body: req.body };
      });
    });
    const url = `${await app.listen({ host: '127.0.0.1', port: 0 })}/o`;
    const post = (body: string) =>
      fetch(url, {
        method: 'POST',
        headers: keyed('key-00000001', { 'content-type': 'application/json' }),
        body,
      });
    const first = await post('{"amount":42}');
    expect(await first.json()).toEqual({ body: { amount: 42 } });
    expect(parsed).toEqual([{ own: true, text: '{"amount":42}' }]);
    expect((await post('{"amount":42}')).headers.get('idempotent-replayed')).toBe('true');
    expect((await post('{"amount":43}')).status).toBe(422);
    expect(runs).toBe(1);
  });

  it('L2, R4: a concurrent duplicate gets 409, which is not recorded', async () => {
    const entered = deferred();
    const release = deferred();
    await build({}, (a) =>
      a.post('/hold', async (_req, reply) => {
        runs++;
        entered.resolve();
        await release.promise;
        return reply.code(201).send({ runs });
      }),
    );
    const first = app.inject({ method: 'POST', url: '/hold', headers: keyed('key-00000001'), payload: {} });
    await entered.promise;
    const duplicate = await app.inject({
      method: 'POST',
      url: '/hold',
      headers: keyed('key-00000001'),
      payload: {},
    });
    expect(duplicate.statusCode).toBe(409);
    expect(duplicate.headers['retry-after']).toBe('1');
    release.resolve();
    expect((await first).statusCode).toBe(201);
    const replay = await app.inject({
      method: 'POST',
      url: '/hold',
      headers: keyed('key-00000001'),
      payload: {},
    });
    expect(replay.statusCode).toBe(201);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('R2: a replay of a response without Content-Type carries none', async () => {
    await build({}, (a) =>
      a.post('/untyped', async (_req, reply) => {
        runs++;
        // Fastify sets no Content-Type for streams; a Buffer replay must not gain one.
        return reply.header('x-run', String(runs)).send(Readable.from([Buffer.from('untyped')]));
      }),
    );
    const { first, second } = await twice('/untyped');
    expect(first.headers['content-type']).toBeUndefined();
    expect(second.body).toBe('untyped');
    expect(second.headers['x-run']).toBe('1');
    expect(second.headers['content-type']).toBeUndefined();
  });

  it("R2, R5: a replay is the recorded response, not passed through the application's onSend hooks again", async () => {
    const responses: number[] = [];
    await build({}, (a) => {
      // A transforming hook (compression, signing, an envelope) ran on the recorded response already.
      a.addHook('onSend', async (_request, reply, payload) => {
        reply.header('x-signed', 'yes');
        return `${String(payload)}!`;
      });
      a.addHook('onResponse', async (_request, reply) => {
        responses.push(reply.statusCode);
      });
      a.post('/o', async () => ({ runs: ++runs }));
    });
    const { first, second } = await twice('/o');
    // onResponse hooks still see the replay.
    expect(responses).toEqual([200, 200]);
    expect(first.body).toBe('{"runs":1}!');
    expect(second.body).toBe('{"runs":1}!');
    expect(second.headers['x-signed']).toBe('yes');
    expect(second.headers['idempotent-replayed']).toBe('true');
  });

  it("R2: a replay keeps headers this request's onRequest hooks set; recorded headers win", async () => {
    let request = 0;
    await build({}, (a) => {
      a.addHook('onRequest', async (_request, reply) => {
        request++;
        reply.header('x-run', 'from the hook');
        if (request > 1) reply.header('x-late', 'yes');
      });
      a.post('/o', async (_req, reply) => reply.header('x-run', String(++runs)).send({ runs }));
    });
    const { first, second } = await twice('/o');
    expect(first.headers['x-late']).toBeUndefined();
    expect(second.headers['x-late']).toBe('yes');
    expect(second.headers['x-run']).toBe('1');
    expect(second.body).toBe(first.body);
  });

  it("R3: a client leaving while the handler runs does not settle the key: the handler's response is recorded", async () => {
    const entered = deferred();
    const left = deferred();
    const release = deferred();
    await build({}, (a) =>
      a.post('/hold', async (req, reply) => {
        runs++;
        req.raw.socket.once('close', () => left.resolve());
        entered.resolve();
        await release.promise;
        return reply.code(201).send({ runs });
      }),
    );
    const url = `${await app.listen({ host: '127.0.0.1', port: 0 })}/hold`;
    const post = (signal?: AbortSignal) =>
      fetch(url, {
        method: 'POST',
        headers: keyed('key-00000001', { 'content-type': 'application/json' }),
        body: '{}',
        signal,
      });
    const abort = new AbortController();
    const gone = post(abort.signal).catch((error: Error) => error.name);
    await entered.promise;
    abort.abort();
    expect(await gone).toBe('AbortError');
    await left.promise;
    release.resolve();
    const retry = await post();
    expect(retry.status).toBe(201);
    expect(await retry.json()).toEqual({ runs: 1 });
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(1);
  });

  it('R5: a 204 is replayed as a 204 without body', async () => {
    await build({}, (a) =>
      a.post('/empty', async (_req, reply) => {
        runs++;
        return reply.code(204).header('x-run', String(runs)).send();
      }),
    );
    const { first, second } = await twice('/empty');
    expect(first.statusCode).toBe(204);
    expect(second.statusCode).toBe(204);
    expect(second.headers['x-run']).toBe('1');
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(second.rawPayload.byteLength).toBe(0);
  });

  it('M3: unkeyed requests pass through untouched and run every time', async () => {
    await build({}, (a) =>
      a.post('/o', async (req) => {
        runs++;
        return { body: req.body };
      }),
    );
    const first = await app.inject({ method: 'POST', url: '/o', payload: { a: 1 } });
    await app.inject({ method: 'POST', url: '/o', payload: { a: 1 } });
    expect(first.json()).toEqual({ body: { a: 1 } });
    expect(runs).toBe(2);
  });

  it('S2: with fail-open the handler runs on a store error and still reads the body', async () => {
    const broken: Store = new MemoryStore();
    broken.acquire = () => Promise.reject(new Error('store down'));
    await build({ store: broken, onStoreError: 'fail-open' }, (a) =>
      a.post('/o', async (req) => {
        runs++;
        return { body: req.body };
      }),
    );
    const response = await app.inject({
      method: 'POST',
      url: '/o',
      headers: keyed('key-00000001'),
      payload: { a: 1 },
    });
    expect(response.statusCode).toBe(200);
    expect(response.json()).toEqual({ body: { a: 1 } });
  });

  it('L5: a hijacked reply still settles the key, so a retry never re-runs the handler', async () => {
    await build({}, (a) =>
      a.post('/raw', async (_req, reply) => {
        runs++;
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': 'text/plain' });
        reply.raw.end('raw');
      }),
    );
    const { first, second } = await twice('/raw');
    expect(first.body).toBe('raw');
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });
});

describe('oncely/fastify route config', () => {
  it('M1: config.idempotency false leaves a route alone', async () => {
    await build({}, (a) => {
      a.post('/off', { config: { idempotency: false } }, async () => ({ runs: ++runs }));
      a.post('/on', async () => ({ runs: ++runs }));
    });
    const off = await twice('/off');
    expect(off.second.json()).toEqual({ runs: 2 });
    expect(off.second.headers['idempotent-replayed']).toBeUndefined();
    const on = await twice('/on', 'key-00000002');
    expect(on.second.headers['idempotent-replayed']).toBe('true');
  });

  it('K6, M2: routes whose methods keys never take effect on are not hooked; with onSafeMethodKey reject they are', async () => {
    await build({}, (a) => {
      a.get('/read', async () => ({ runs: ++runs }));
      a.put('/write', async () => ({ runs: ++runs }));
      a.route({ method: ['GET', 'POST'], url: '/both', handler: async () => ({ runs: ++runs }) });
    });
    // Watched from here on: what each request asks the engine, not what route declaration did.
    const asked = vi.spyOn(Engine.prototype, 'passes');
    const headers = keyed('not a key!');
    expect((await app.inject({ method: 'GET', url: '/read', headers })).statusCode).toBe(200);
    expect((await app.inject({ method: 'PUT', url: '/write', headers, payload: {} })).statusCode).toBe(200);
    expect(asked).not.toHaveBeenCalled();
    // A route that also takes POST is hooked, and its GET requests pass the engine untouched.
    expect((await app.inject({ method: 'GET', url: '/both', headers })).statusCode).toBe(200);
    expect(asked).toHaveBeenCalledTimes(1);
    expect((await app.inject({ method: 'POST', url: '/both', headers, payload: {} })).statusCode).toBe(400);
    await app.close();
    await build({ onSafeMethodKey: 'reject' }, (a) => a.get('/read', async () => ({ runs: ++runs })));
    const rejected = await app.inject({ method: 'GET', url: '/read', headers: keyed('key-00000001') });
    expect(rejected.statusCode).toBe(400);
    expect(rejected.json().code).toBe('idempotency_key_not_allowed');
    asked.mockRestore();
  });

  it('M3: per-route overrides apply to that route only', async () => {
    await build({}, (a) => {
      a.post('/strict', { config: { idempotency: { required: true } } }, async () => ({ runs: ++runs }));
      a.post('/loose', async () => ({ runs: ++runs }));
    });
    const strict = await app.inject({ method: 'POST', url: '/strict', payload: {} });
    expect(strict.statusCode).toBe(400);
    expect(strict.json().code).toBe('idempotency_key_missing');
    const loose = await app.inject({ method: 'POST', url: '/loose', payload: {} });
    expect(loose.statusCode).toBe(200);
    expect(runs).toBe(1);
  });

  it('R1: per-route overrides share the plugin store unless they name their own', async () => {
    const store = new MemoryStore();
    await build({ store }, (a) => {
      a.post('/a', { config: { idempotency: { record: '2xx' } } }, async (_req, reply) =>
        reply.code(runs++ === 0 ? 500 : 201).send({ runs }),
      );
    });
    const { first, second } = await twice('/a');
    // record: '2xx' on this route: the 500 released the key, so the retry ran again.
    expect(first.statusCode).toBe(500);
    expect(second.statusCode).toBe(201);
    const third = await app.inject({
      method: 'POST',
      url: '/a',
      headers: keyed('key-00000001'),
      payload: { amount: 1 },
    });
    expect(third.headers['idempotent-replayed']).toBe('true');
    const scope = createHash('sha256').update('').digest('hex');
    expect(await store.get(scope, 'key-00000001')).toMatchObject({ state: 'completed' });
  });

  it('options are validated when the plugin registers and when a route declares overrides', async () => {
    const bad = Fastify();
    await expect(bad.register(idempotency, { ttlMs: -1 }).ready()).rejects.toThrow(/options\.ttlMs/);
    await build();
    expect(() => app.post('/x', { config: { idempotency: { lockTimeoutMs: 0 } } }, async () => ({}))).toThrow(
      /options\.lockTimeoutMs/,
    );
  });
});
