import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { type Context, Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { afterEach, describe, expect, it } from 'vitest';
import type { Store } from '../core/store.js';
import { MemoryStore } from '../stores/memory.js';
import { idempotency } from './hono.js';

const KEY = 'key-00000001';
let runs = 0;

function post(app: Hono, path: string, body: unknown = { amount: 1 }, headers: Record<string, string> = {}) {
  return app.request(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': KEY, ...headers },
    body: JSON.stringify(body),
  });
}

async function twice(app: Hono, path: string, body?: unknown) {
  const first = await post(app, path, body);
  const firstText = await first.text();
  const second = await post(app, path, body);
  return { first, firstText, second, secondText: await second.text() };
}

afterEach(() => {
  runs = 0;
});

describe('oncely/hono', () => {
  it('R1, R2: mounted globally, a keyed POST runs once and c.req.json() still reads the body', async () => {
    const app = new Hono();
    app.use('*', idempotency());
    app.post('/payments', async (c) =>
      c.json({ runs: ++runs, body: await c.req.json() }, 201, { 'x-run': String(runs) }),
    );
    const { first, firstText, second, secondText } = await twice(app, '/payments', { amount: 42 });
    expect(first.status).toBe(201);
    expect(JSON.parse(firstText)).toEqual({ runs: 1, body: { amount: 42 } });
    expect(second.status).toBe(201);
    expect(secondText).toBe(firstText);
    expect(second.headers.get('x-run')).toBe('1');
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(runs).toBe(1);
  });

  it('R1: mounted on one route, it protects that route only', async () => {
    const app = new Hono();
    const store = new MemoryStore();
    app.post('/protected', idempotency({ store }), (c) => c.json({ runs: ++runs }));
    app.post('/open', (c) => c.json({ runs: ++runs }));
    const open = await twice(app, '/open');
    expect(open.second.headers.get('idempotent-replayed')).toBeNull();
    expect(runs).toBe(2);
    const protectedRoute = await twice(app, '/protected');
    expect(protectedRoute.second.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(3);
  });

  it('F1: the handler can read c.req.raw itself, and c.req.text() after an earlier middleware read the body', async () => {
    const app = new Hono();
    app.use('*', async (c, next) => {
      await c.req.json(); // a validator-like middleware before oncely
      await next();
    });
    app.use('*', idempotency());
    app.post('/raw', async (c) => c.text(`${++runs}:${await c.req.raw.text()}`));
    const { firstText, secondText } = await twice(app, '/raw', { a: 1 });
    expect(firstText).toBe('1:{"a":1}');
    expect(secondText).toBe(firstText);
  });

  it('F2: the same key with another body is answered 422', async () => {
    const app = new Hono();
    app.use('*', idempotency());
    app.post('/payments', async (c) => c.json({ runs: ++runs }));
    await post(app, '/payments', { amount: 1 });
    const reused = await post(app, '/payments', { amount: 2 });
    expect(reused.status).toBe(422);
    expect(((await reused.json()) as { code: string }).code).toBe('idempotency_key_reused');
    expect(runs).toBe(1);
  });

  it('R3: a thrown error is recorded as the response app.onError renders', async () => {
    const app = new Hono();
    app.use('*', idempotency());
    app.onError((error, c) => c.json({ handled: error.message }, 418));
    app.post('/throw', () => {
      throw new Error(`boom ${++runs}`);
    });
    const { first, firstText, second, secondText } = await twice(app, '/throw');
    expect(first.status).toBe(418);
    expect(JSON.parse(firstText)).toEqual({ handled: 'boom 1' });
    expect(second.status).toBe(418);
    expect(secondText).toBe(firstText);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(1);
  });

  it('R3: an HTTPException is recorded as the response Hono renders for it', async () => {
    const app = new Hono();
    app.use('*', idempotency());
    app.post('/forbidden', () => {
      runs++;
      throw new HTTPException(403, { message: 'not yours' });
    });
    const { first, firstText, second, secondText } = await twice(app, '/forbidden');
    expect(first.status).toBe(403);
    expect(firstText).toBe('not yours');
    expect(second.status).toBe(403);
    expect(secondText).toBe('not yours');
    expect(runs).toBe(1);
  });

  it('R3: a non-Error throw, which Hono does not render, records a 500 problem', async () => {
    const app = new Hono();
    app.post('/odd', idempotency(), () => {
      runs++;
      throw 'not an error';
    });
    const first = await post(app, '/odd');
    expect(first.status).toBe(500);
    expect(first.headers.get('content-type')).toBe('application/problem+json');
    const second = await post(app, '/odd');
    expect(second.status).toBe(500);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(1);
  });

  it('S1: the scope option receives the Hono Context', async () => {
    const app = new Hono<{ Variables: { tenant: string } }>();
    app.use('*', async (c, next) => {
      c.set('tenant', c.req.header('x-tenant') ?? 'none');
      await next();
    });
    app.use('*', idempotency({ scope: (request) => (request.raw as Context).get('tenant') }));
    app.post('/payments', (c) => c.json({ runs: ++runs }));
    await post(app as unknown as Hono, '/payments', {}, { 'x-tenant': 'a' });
    const other = await post(app as unknown as Hono, '/payments', {}, { 'x-tenant': 'b' });
    expect(other.headers.get('idempotent-replayed')).toBeNull();
    const same = await post(app as unknown as Hono, '/payments', {}, { 'x-tenant': 'a' });
    expect(same.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(2);
  });

  it('M3: unkeyed requests pass through untouched', async () => {
    const app = new Hono();
    app.use('*', idempotency());
    app.post('/payments', async (c) => c.json({ runs: ++runs, body: await c.req.json() }));
    const init = { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } };
    await app.request('/payments', init);
    const again = await app.request('/payments', init);
    expect(await again.json()).toEqual({ runs: 2, body: { a: 1 } });
  });

  it('S2: with fail-open the handler runs unprotected on a store error and still reads the body', async () => {
    const store: Store = new MemoryStore();
    store.acquire = () => Promise.reject(new Error('store down'));
    const app = new Hono();
    app.use('*', idempotency({ store, onStoreError: 'fail-open' }));
    app.post('/payments', async (c) => c.json({ body: await c.req.json() }));
    const response = await post(app, '/payments', { a: 1 });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ body: { a: 1 } });
  });

  describe('over a real socket with @hono/node-server', () => {
    let close: (() => Promise<void>) | undefined;
    afterEach(async () => {
      await close?.();
      close = undefined;
    });

    it('R1, R2, R6: the response is recorded before it is sent, and replayed byte for byte', async () => {
      const store = new MemoryStore();
      const app = new Hono();
      app.use('*', idempotency({ store }));
      app.post('/payments', async (c) => c.json({ runs: ++runs, body: await c.req.json() }, 201));
      const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
        const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
      });
      close = () => new Promise((resolve) => server.close(() => resolve()));
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/payments`;
      const init = {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': KEY },
        body: '{"amount":7}',
      };
      const first = await fetch(url, init);
      const firstText = await first.text();
      expect(JSON.parse(firstText)).toEqual({ runs: 1, body: { amount: 7 } });
      const second = await fetch(url, init);
      expect(second.status).toBe(201);
      expect(await second.text()).toBe(firstText);
      expect(second.headers.get('idempotent-replayed')).toBe('true');
      expect(runs).toBe(1);
    });
    it('F1: on Node the handler reads the body oncely read, whether or not an earlier middleware built or read the Request', async () => {
      const app = new Hono();
      app.use('/signal', async (c, next) => {
        void c.req.raw.signal; // builds the full Request without reading its body
        await next();
      });
      app.use('/read', async (c, next) => {
        await c.req.text(); // reads the body before oncely
        await next();
      });
      app.use('*', idempotency());
      app.post('*', async (c) => {
        const raw = await c.req.raw.clone().text();
        return c.text(`${++runs}:${await c.req.text()}:${raw}`);
      });
      const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
        const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
      });
      close = () => new Promise((resolve) => server.close(() => resolve()));
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      for (const path of ['/plain', '/signal', '/read']) {
        const init = {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': `key-${path.slice(1)}-0001` },
          body: '{"amount":7}',
        };
        const before = runs;
        const first = await (await fetch(base + path, init)).text();
        expect(first).toBe(`${before + 1}:{"amount":7}:{"amount":7}`);
        const second = await fetch(base + path, init);
        expect(await second.text()).toBe(first);
        expect(second.headers.get('idempotent-replayed')).toBe('true');
      }
      expect(runs).toBe(3);
    });
  });

  it('options are validated when the middleware is created', () => {
    expect(() => idempotency({ ttlMs: 0 })).toThrow(/options\.ttlMs/);
  });
});
