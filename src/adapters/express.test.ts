import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import compression from 'compression';
import express5, { type Express, type NextFunction, type Request, type Response } from 'express';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { deferred, type RunningServer } from '../../test/conformance/app.js';
import { express4, listen } from '../../test/conformance/fixtures/express.js';
import { readStream } from '../../test/conformance/fixtures/koa.js';
import { type Received, type SendOptions, send } from '../../test/conformance/http.js';
import { newKey } from '../../test/conformance/suite.js';
import type { EngineEvent } from '../core/events.js';
import type { IdempotencyOptions } from '../core/options.js';
import { MemoryStore } from '../stores/memory.js';
import { idempotency } from './express.js';

type Handler = (req: Request, res: Response, next: NextFunction) => unknown;

const dir = mkdtempSync(join(tmpdir(), 'oncely-express-'));
const file = join(dir, 'receipt.bin');
writeFileSync(
  file,
  new Uint8Array(300).map((_, i) => (i * 7) % 256),
);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A replay: same status, body bytes and end-to-end headers as the first response, marked (R2, R5). */
function expectReplay(first: Received, again: Received): void {
  expect(first.headers['idempotent-replayed']).toBeUndefined();
  expect(again.headers['idempotent-replayed']).toBe('true');
  expect(again.status).toBe(first.status);
  expect(again.body.equals(first.body)).toBe(true);
  for (const name of ['content-type', 'location', 'etag', 'x-handler'])
    expect(again.headers[name], name).toBe(first.headers[name]);
}

describe.each([
  ['Express 5', express5],
  ['Express 4', express4],
])('oncely/express (%s)', (_label, express) => {
  const running: RunningServer[] = [];
  afterEach(async () => {
    await Promise.all(running.splice(0).map((server) => server.close()));
  });

  /** An app with `setup` applied, counting runs of the final handler. */
  async function serve(setup: (app: Express, counted: (h: Handler) => Handler) => void) {
    const app = express();
    const runs = { count: 0 };
    const counted =
      (handler: Handler): Handler =>
      (req, res, next) => {
        runs.count++;
        return handler(req, res, next);
      };
    setup(app, counted);
    const server = await listen(app);
    running.push(server);
    const post = (options: SendOptions = {}) => send(server.url, { path: '/', body: '{"a":1}', ...options });
    return { runs, post };
  }

  /** Serve one handler behind oncely; POST twice with one key. */
  async function twice(handler: Handler, options: IdempotencyOptions = {}) {
    const { runs, post } = await serve((app, counted) => {
      app.use(idempotency(options));
      app.use(counted(handler));
    });
    const key = newKey();
    const first = await post({ key });
    const again = await post({ key });
    return { first, again, runs };
  }

  const paths: Array<[string, Handler]> = [
    ['res.send(string)', (_req, res) => res.set('x-handler', 'send').status(201).send('<p>created</p>')],
    ['res.json', (_req, res) => res.status(201).json({ id: 'pay_1', amount: 1000 })],
    ['res.end', (_req, res) => res.status(202).end('accepted')],
    [
      'res.write + res.end',
      (_req, res) => {
        res.setHeader('content-type', 'text/plain');
        res.write('one ');
        res.write(Buffer.from('two '));
        res.end('three');
      },
    ],
    ['res.writeHead + end', (_req, res) => res.writeHead(201, { 'x-handler': 'head' }).end()],
    ['res.sendStatus', (_req, res) => res.sendStatus(402)],
    ['res.redirect', (_req, res) => res.redirect(303, '/payments/pay_1')],
    ['a piped stream', (_req, res) => Readable.from([Buffer.from('a'), Buffer.from('bc')]).pipe(res)],
    ['res.sendFile', (_req, res, next) => res.sendFile(file, (error) => error && next(error))],
  ];
  for (const [name, handler] of paths) {
    it(`R1, R2, R5: ${name} is recorded and replayed byte-exact, the handler runs once`, async () => {
      const { first, again, runs } = await twice(handler);
      expectReplay(first, again);
      expect(runs.count).toBe(1);
    });
  }

  it('R2: a header named __proto__ is neither recorded nor turned into other headers on the replay', async () => {
    const { first, again } = await twice((_req, res) => {
      res.setHeader('__proto__', ['a', 'b']);
      res.status(201).send('ok');
    });
    expect(first.status).toBe(201);
    expect(again.headers['idempotent-replayed']).toBe('true');
    const names = Object.keys(again.headers);
    for (const name of ['__proto__', '0', '1']) expect(names).not.toContain(name);
    expect(again.text).toBe('ok');
  });

  it('R1, R5: res.sendFile replays the file bytes', async () => {
    const { again } = await twice((_req, res) => res.sendFile(file));
    expect(again.body.length).toBe(300);
    expect(again.body[10]).toBe(70);
  });

  it("R3: an error passed to next(err) records Express's default error response", async () => {
    const { first, again, runs } = await twice((_req, _res, next) => next(new Error('card declined')));
    expect(first.status).toBe(500);
    expect(first.headers['content-type']).toMatch(/^text\/html/);
    expectReplay(first, again);
    expect(runs.count).toBe(1);
  });

  it("R3: the app's own error handler's response is what is recorded", async () => {
    const { runs, post } = await serve((app, counted) => {
      app.use(idempotency());
      app.use(counted((_req, _res, next) => next(Object.assign(new Error('no funds'), { status: 402 }))));
      app.use((error: Error & { status: number }, _req: Request, res: Response, _next: NextFunction) => {
        res.status(error.status).json({ error: error.message });
      });
    });
    const key = newKey();
    const first = await post({ key });
    expect(first.status).toBe(402);
    expect(first.json()).toEqual({ error: 'no funds' });
    expectReplay(first, await post({ key }));
    expect(runs.count).toBe(1);
  });

  if (express === express5) {
    it('R3: an async handler that rejects (Express 5) records the error response', async () => {
      const { first, again, runs } = await twice(async () => {
        throw new Error('rejected');
      });
      expect(first.status).toBe(500);
      expectReplay(first, again);
      expect(runs.count).toBe(1);
    });
  }

  it('R3: an error after the handler began writing aborts the response and records a 500 problem', async () => {
    const recorded = deferred<EngineEvent>();
    const onEvent = (event: EngineEvent) => event.type === 'executed' && recorded.resolve(event);
    const { runs, post } = await serve((app, counted) => {
      app.use(idempotency({ onEvent }));
      app.use(
        counted((_req, res, next) => {
          res.write('partial ');
          next(new Error('failed midway'));
        }),
      );
    });
    const key = newKey();
    // Express's final handler sees the headers as sent and cuts the connection, as without oncely.
    await expect(post({ key })).rejects.toThrow();
    expect((await recorded.promise).status).toBe(500);
    const again = await post({ key });
    expect(again.status).toBe(500);
    expect(again.headers['content-type']).toBe('application/problem+json');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(runs.count).toBe(1);
  });

  describe('the body stays readable', () => {
    const parsers: Array<[string, () => Handler, (req: Request) => Promise<unknown>]> = [
      ['express.json()', () => express.json(), async (req) => req.body],
      ['express.raw()', () => express.raw({ type: '*/*' }), async (req) => String(req.body)],
      ['express.text()', () => express.text({ type: '*/*' }), async (req) => req.body],
      [
        'a raw stream reader',
        () => (_req, _res, next) => next(),
        async (req) => String(await readStream(req)),
      ],
    ];
    for (const [name, parser, read] of parsers) {
      it(`F1: mounted before ${name}, oncely hands it the whole body`, async () => {
        const { runs, post } = await serve((app, counted) => {
          app.use(idempotency());
          app.use(parser());
          app.use(counted(async (req, res) => res.status(201).json({ got: await read(req) })));
        });
        const key = newKey();
        const body = JSON.stringify({ amount: 1000, note: 'x'.repeat(100_000) });
        const first = await post({ key, body, chunked: true });
        const got = (first.json() as { got: unknown }).got;
        expect(typeof got === 'string' ? got : JSON.stringify(got)).toBe(body);
        expectReplay(first, await post({ key, body, chunked: true }));
        expect(runs.count).toBe(1);
      });
    }

    for (const [name, parser, read] of parsers.slice(0, 3)) {
      it(`F1, F2: mounted after ${name}, oncely fingerprints the parsed body`, async () => {
        const { runs, post } = await serve((app, counted) => {
          app.use(parser());
          app.use(idempotency());
          app.use(counted(async (req, res) => res.status(201).json({ got: await read(req) })));
        });
        const key = newKey();
        const first = await post({ key, body: '{"amount":1000}' });
        expect(first.status).toBe(201);
        expectReplay(first, await post({ key, body: '{"amount":1000}' }));
        const other = await post({ key, body: '{"amount":9999}' });
        expect(other.status).toBe(422);
        expect(runs.count).toBe(1);
      });
    }

    it('R7: mounted after a parser, a parsed body over maxRequestBytes is answered 413', async () => {
      const { runs, post } = await serve((app, counted) => {
        app.use(express.text({ type: '*/*' }));
        app.use(idempotency({ maxRequestBytes: 16 }));
        app.use(counted((_req, res) => res.sendStatus(201)));
      });
      expect((await post({ key: newKey(), body: 'x'.repeat(17) })).status).toBe(413);
      expect(runs.count).toBe(0);
    });
  });

  it('F1: the fingerprint uses the full URL wherever the middleware is mounted', async () => {
    const store = new MemoryStore();
    const { runs, post } = await serve((app, counted) => {
      for (const path of ['/a', '/b']) {
        const router = express.Router();
        router.use(idempotency({ store }));
        router.post(
          '/pay',
          counted((_req, res) => res.status(201).send(path)),
        );
        app.use(path, router);
      }
    });
    const key = newKey();
    expect((await post({ key, path: '/a/pay' })).text).toBe('/a');
    // Same key, same mounted path `/pay`, another full URL: another request (F2).
    expect((await post({ key, path: '/b/pay' })).status).toBe(422);
    expect(runs.count).toBe(1);
  });

  it('R1, R6: a response sent from a mounted sub-app (Express swaps the prototype of res) is recorded', async () => {
    const { runs, post } = await serve((app, counted) => {
      const sub = express();
      sub.post(
        '/pay',
        counted((_req, res) => res.status(201).json({ id: 'pay_1' })),
      );
      app.use(idempotency());
      app.use('/sub', sub);
    });
    const key = newKey();
    const first = await post({ key, path: '/sub/pay' });
    expect(first.status).toBe(201);
    expectReplay(first, await post({ key, path: '/sub/pay' }));
    expect(runs.count).toBe(1);
  });

  it('R1, R6: with oncely mounted twice on a route, each one records the response', async () => {
    const executed: string[] = [];
    const engine = (name: string) =>
      idempotency({
        onEvent: (event) => event.type === 'executed' && executed.push(`${name} ${event.status}`),
      });
    const { runs, post } = await serve((app, counted) => {
      app.use(engine('outer'));
      app.use(engine('inner'));
      app.use(counted((_req, res) => res.status(201).send('created')));
    });
    const key = newKey();
    const first = await post({ key });
    expect(first.text).toBe('created');
    expect(executed.sort()).toEqual(['inner 201', 'outer 201']);
    expectReplay(first, await post({ key }));
    expect(runs.count).toBe(1);
  });

  it('R1: what a middleware wrapping res.end sends (compression, say) is what is recorded', async () => {
    const { runs, post } = await serve((app, counted) => {
      app.use(idempotency());
      app.use((_req, res, next) => {
        const end = res.end;
        res.end = function (this: typeof res, chunk?: unknown, ...rest: unknown[]) {
          // res.send hands end() a Buffer; same length, so its Content-Length still holds.
          const changed = Buffer.isBuffer(chunk) ? Buffer.from(chunk.toString().toUpperCase()) : chunk;
          return (end as (...args: unknown[]) => typeof res).call(this, changed, ...rest);
        } as typeof res.end;
        next();
      });
      app.use(counted((_req, res) => res.status(201).send('created')));
    });
    const key = newKey();
    const first = await post({ key });
    expect(first.text).toBe('CREATED');
    const again = await post({ key });
    expectReplay(first, again);
    expect(again.text).toBe('CREATED');
    expect(runs.count).toBe(1);
  });

  it.each([
    ['compression, then oncely', true],
    ['oncely, then compression', false],
  ])(
    'R1, R5: with %s, the compressed bytes and their Content-Encoding are recorded and replayed',
    async (_order, compressionFirst) => {
      const text = 'order '.repeat(500);
      const { runs, post } = await serve((app, counted) => {
        if (compressionFirst) app.use(compression({ threshold: 0 }));
        app.use(idempotency());
        if (!compressionFirst) app.use(compression({ threshold: 0 }));
        app.use(counted((_req, res) => res.status(201).json({ text })));
      });
      const key = newKey();
      const gzip = { 'accept-encoding': 'gzip' };
      const first = await post({ key, headers: gzip });
      expect(first.status).toBe(201);
      expect(first.headers['content-encoding']).toBe('gzip');
      expect(first.body.byteLength).toBeLessThan(text.length);
      expect(JSON.parse(gunzipSync(first.body).toString())).toEqual({ text });
      const again = await post({ key, headers: gzip });
      expectReplay(first, again);
      expect(again.headers['content-encoding']).toBe('gzip');
      expect(runs.count).toBe(1);
    },
  );

  it('capturing a response adds no property to it (a response whose prototype Express swapped keeps its shape)', async () => {
    const seen: { before?: (string | symbol)[]; during?: (string | symbol)[] } = {};
    const { post } = await serve((app) => {
      app.use((_req, res, next) => {
        seen.before = Reflect.ownKeys(res);
        next();
      });
      app.use(idempotency());
      app.use((_req, res) => {
        seen.during = Reflect.ownKeys(res);
        res.status(201).send('ok');
      });
    });
    expect((await post({ key: newKey() })).status).toBe(201);
    expect(seen.during).toEqual(seen.before);
  });

  it('M3: unkeyed requests pass through to the app untouched', async () => {
    const { runs, post } = await serve((app, counted) => {
      app.use(idempotency());
      app.use(express.json());
      app.use(counted((req, res) => res.json(req.body)));
    });
    expect((await post()).json()).toEqual({ a: 1 });
    expect((await post()).json()).toEqual({ a: 1 });
    expect(runs.count).toBe(2);
  });

  it("S1: the scope callback receives Express's req", async () => {
    const { runs, post } = await serve((app, counted) => {
      app.use((req, _res, next) => {
        (req as Request & { tenant?: string }).tenant = String(req.headers['x-tenant']);
        next();
      });
      app.use(idempotency({ scope: (request) => (request.raw as Request & { tenant: string }).tenant }));
      app.use(counted((_req, res) => res.status(201).send('ok')));
    });
    const key = newKey();
    await post({ key, headers: { 'x-tenant': 't1' } });
    expect((await post({ key, headers: { 'x-tenant': 't1' } })).headers['idempotent-replayed']).toBe('true');
    expect(
      (await post({ key, headers: { 'x-tenant': 't2' } })).headers['idempotent-replayed'],
    ).toBeUndefined();
    expect(runs.count).toBe(2);
  });

  it('S1: an error thrown by the scope callback reaches Express error handling', async () => {
    const { runs, post } = await serve((app, counted) => {
      app.use(
        idempotency({
          scope: () => {
            throw new Error('no tenant');
          },
        }),
      );
      app.use(counted((_req, res) => res.sendStatus(201)));
      app.use((error: Error, _req: Request, res: Response, _next: NextFunction) =>
        res.status(401).send(error.message),
      );
    });
    const received = await post({ key: newKey() });
    expect(received.status).toBe(401);
    expect(received.text).toBe('no tenant');
    expect(runs.count).toBe(0);
  });
});
