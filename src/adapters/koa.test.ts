import { Readable } from 'node:stream';
import Koa3, { type Context, type Middleware } from 'koa';
import { afterEach, describe, expect, it } from 'vitest';
import { deferred, type RunningServer } from '../../test/conformance/app.js';
import { listen } from '../../test/conformance/fixtures/express.js';
import { Koa2, readStream } from '../../test/conformance/fixtures/koa.js';
import { type Received, type SendOptions, send } from '../../test/conformance/http.js';
import { newKey } from '../../test/conformance/suite.js';
import type { EngineEvent } from '../core/events.js';
import type { IdempotencyOptions } from '../core/options.js';
import { idempotency } from './koa.js';

/** A replay: same status, body bytes and end-to-end headers as the first response, marked (R2, R5). */
function expectReplay(first: Received, again: Received): void {
  expect(first.headers['idempotent-replayed']).toBeUndefined();
  expect(again.headers['idempotent-replayed']).toBe('true');
  expect(again.status).toBe(first.status);
  expect(again.body.equals(first.body)).toBe(true);
  for (const name of ['content-type', 'location', 'x-handler', 'x-upstream'])
    expect(again.headers[name], name).toBe(first.headers[name]);
}

describe.each([
  // A stream body failing midway: Koa 3's pipeline() aborts the response; Koa 2 would leave it
  // open, and oncely answers the 500 problem it records instead.
  ['Koa 2', Koa2, 'answered 500'],
  ['Koa 3', Koa3, 'aborted'],
] as const)('oncely/koa (%s)', (_version, Koa, failedStream) => {
  const running: RunningServer[] = [];
  afterEach(async () => {
    await Promise.all(running.splice(0).map((server) => server.close()));
  });

  /** A Koa app of `middleware`, counting runs of the last one. */
  async function serve(...middleware: Middleware[]) {
    const app = new Koa();
    app.silent = true;
    const runs = { count: 0 };
    const last = middleware.pop()!;
    for (const fn of middleware) app.use(fn);
    app.use((ctx, next) => {
      runs.count++;
      return last(ctx, next);
    });
    const server = await listen(app.callback());
    running.push(server);
    const post = (options: SendOptions = {}) => send(server.url, { path: '/', body: '{"a":1}', ...options });
    return { runs, post };
  }

  async function twice(handler: Middleware, options: IdempotencyOptions<Context> = {}) {
    const { runs, post } = await serve(idempotency(options), handler);
    const key = newKey();
    const first = await post({ key });
    const again = await post({ key });
    return { first, again, runs };
  }

  const bodies: Array<[string, Middleware]> = [
    [
      'ctx.body = string',
      (ctx) => {
        ctx.status = 201;
        ctx.set('x-handler', 'string');
        ctx.body = '<p>created</p>';
      },
    ],
    [
      'ctx.body = Buffer',
      (ctx) => {
        ctx.body = Buffer.from([0, 1, 2, 254, 255]);
      },
    ],
    [
      'ctx.body = object (JSON)',
      (ctx) => {
        ctx.status = 201;
        ctx.body = { id: 'pay_1', amount: 1000 };
      },
    ],
    [
      'ctx.body = stream',
      (ctx) => {
        ctx.type = 'text/plain';
        ctx.body = Readable.from([Buffer.from('a'), Buffer.from('bc')]);
      },
    ],
    [
      'ctx.status = 204',
      (ctx) => {
        ctx.status = 204;
      },
    ],
    ['ctx.redirect', (ctx) => ctx.redirect('/payments/pay_1')],
    [
      'ctx.res written directly (ctx.respond = false)',
      (ctx) => {
        ctx.respond = false;
        ctx.res.writeHead(202, { 'x-handler': 'raw' });
        ctx.res.write('one ');
        ctx.res.end('two');
      },
    ],
  ];
  for (const [name, handler] of bodies) {
    it(`R1, R2, R5: ${name} is recorded and replayed byte-exact, the handler runs once`, async () => {
      const { first, again, runs } = await twice(handler);
      expectReplay(first, again);
      expect(runs.count).toBe(1);
    });
  }

  it("R3: a thrown error records Koa's error response", async () => {
    const { first, again, runs } = await twice(() => {
      throw new Error('card declined');
    });
    expect(first.status).toBe(500);
    expect(first.text).toBe('Internal Server Error');
    expectReplay(first, again);
    expect(runs.count).toBe(1);
  });

  it('R3: ctx.throw(402) records the 402 Koa sends', async () => {
    const { first, again, runs } = await twice((ctx) => ctx.throw(402, 'no funds'));
    expect(first.status).toBe(402);
    expect(first.text).toBe('no funds');
    expectReplay(first, again);
    expect(runs.count).toBe(1);
  });

  it("R3: an upstream error-handling middleware's response is what is recorded", async () => {
    const handled: Middleware = async (ctx, next) => {
      try {
        await next();
      } catch (error) {
        ctx.status = 409;
        ctx.body = { error: (error as Error).message };
      }
    };
    const { runs, post } = await serve(handled, idempotency(), () => {
      throw new Error('duplicate order');
    });
    const key = newKey();
    const first = await post({ key });
    expect(first.status).toBe(409);
    expect(first.json()).toEqual({ error: 'duplicate order' });
    expectReplay(first, await post({ key }));
    expect(runs.count).toBe(1);
  });

  it('R3: a body stream that fails midway records a 500 problem (Koa 3 aborts the response, Koa 2 gets the problem)', async () => {
    const recorded = deferred<EngineEvent>();
    const onEvent = (event: EngineEvent) => event.type === 'executed' && recorded.resolve(event);
    const { runs, post } = await serve(idempotency({ onEvent }), (ctx) => {
      ctx.body = Readable.from(
        (async function* () {
          yield Buffer.from('partial ');
          throw new Error('disk gone');
        })(),
      );
    });
    const key = newKey();
    if (failedStream === 'aborted') await expect(post({ key })).rejects.toThrow();
    else {
      const first = await post({ key });
      expect(first.status).toBe(500);
      expect(first.headers['content-type']).toBe('application/problem+json');
    }
    expect((await recorded.promise).status).toBe(500);
    const again = await post({ key });
    expect(again.status).toBe(500);
    expect(again.headers['content-type']).toBe('application/problem+json');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(runs.count).toBe(1);
  });

  it('R2: headers set upstream before oncely are recorded and set again on replay', async () => {
    const upstream: Middleware = (ctx, next) => {
      ctx.set('x-upstream', 'yes');
      return next();
    };
    const { runs, post } = await serve(upstream, idempotency(), (ctx) => {
      ctx.status = 201;
      ctx.body = 'ok';
    });
    const key = newKey();
    const first = await post({ key });
    expect(first.headers['x-upstream']).toBe('yes');
    expectReplay(first, await post({ key }));
    expect(runs.count).toBe(1);
  });

  it('F1: mounted before a raw stream reader, oncely hands it the whole body', async () => {
    const body = JSON.stringify({ amount: 1000, note: 'x'.repeat(100_000) });
    const { runs, post } = await serve(idempotency(), async (ctx) => {
      ctx.status = 201;
      ctx.body = { got: String(await readStream(ctx.req)) };
    });
    const key = newKey();
    const first = await post({ key, body, chunked: true });
    expect((first.json() as { got: string }).got).toBe(body);
    expectReplay(first, await post({ key, body, chunked: true }));
    expect(runs.count).toBe(1);
  });

  it('F1, F2: mounted after a body parser, oncely fingerprints ctx.request.body', async () => {
    // What koa-bodyparser does: consume ctx.req, leave the result on ctx.request.body.
    const parser: Middleware = async (ctx, next) => {
      (ctx.request as { body?: unknown }).body = JSON.parse(String(await readStream(ctx.req)));
      return next();
    };
    const { runs, post } = await serve(parser, idempotency(), (ctx) => {
      ctx.status = 201;
      ctx.body = { got: (ctx.request as { body?: unknown }).body };
    });
    const key = newKey();
    const first = await post({ key, body: '{"amount":1000}' });
    expect(first.json()).toEqual({ got: { amount: 1000 } });
    expectReplay(first, await post({ key, body: '{"amount":1000}' }));
    expect((await post({ key, body: '{"amount":9999}' })).status).toBe(422);
    expect(runs.count).toBe(1);
  });

  it('F1: the fingerprint uses the original URL even when a router rewrites ctx.url', async () => {
    const rewrite: Middleware = (ctx, next) => {
      ctx.url = '/pay';
      return next();
    };
    const { runs, post } = await serve(rewrite, idempotency(), (ctx) => {
      ctx.status = 201;
      ctx.body = ctx.originalUrl;
    });
    const key = newKey();
    expect((await post({ key, path: '/a' })).text).toBe('/a');
    expect((await post({ key, path: '/b' })).status).toBe(422);
    expect(runs.count).toBe(1);
  });

  it('P1: problems are written as sent, whatever Koa would add', async () => {
    const { runs, post } = await serve(idempotency({ required: true }), (ctx) => {
      ctx.body = 'never';
    });
    const received = await post();
    expect(received.status).toBe(400);
    expect(received.headers['content-type']).toBe('application/problem+json');
    expect((received.json() as { code: string }).code).toBe('idempotency_key_missing');
    expect(runs.count).toBe(0);
  });

  it("S1: the scope callback receives Koa's ctx", async () => {
    const auth: Middleware = (ctx, next) => {
      ctx.state.tenant = ctx.get('x-tenant');
      return next();
    };
    const scope = (request: { raw: Context }) => String(request.raw.state.tenant);
    const { runs, post } = await serve(auth, idempotency({ scope }), (ctx) => {
      ctx.status = 201;
      ctx.body = 'ok';
    });
    const key = newKey();
    await post({ key, headers: { 'x-tenant': 't1' } });
    expect((await post({ key, headers: { 'x-tenant': 't1' } })).headers['idempotent-replayed']).toBe('true');
    expect(
      (await post({ key, headers: { 'x-tenant': 't2' } })).headers['idempotent-replayed'],
    ).toBeUndefined();
    expect(runs.count).toBe(2);
  });
});
