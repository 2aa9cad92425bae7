/**
 * @module oncely/hono: Hono 4 middleware that makes keyed POST and PATCH requests run once, on Node
 * (@hono/node-server) and on every Fetch runtime.
 */
import type { Context, MiddlewareHandler } from 'hono';
import { Engine, type IncomingRequest, PASS } from '../core/engine.js';
import { RequestTooLargeError } from '../core/errors.js';
import type { IdempotencyOptions } from '../core/options.js';
import { FetchRequest, settleFetchResponse, toFetchResponse } from './fetch.js';

/** Options of the middleware; `scope` and `fingerprint` receive Hono's `Context` as `raw`. */
export type HonoIdempotencyOptions = IdempotencyOptions<Context>;

/**
 * Hono middleware: the first keyed POST or PATCH runs the handler and its response is recorded
 * before it is sent; retries with the same key get that response back (`Idempotent-Replayed: true`).
 * Mount it globally (`app.use('*', idempotency())`, after authentication) or on single routes.
 * Handlers still read the body as usual (`c.req.json()`, `c.req.raw`); errors thrown by handlers are
 * recorded as the response `app.onError` renders (R3).
 *
 * @param options see {@link IdempotencyOptions}; `store` defaults to a new `MemoryStore` per call,
 *   so share one store between several `idempotency()` middlewares explicitly
 * @example
 * import { Hono } from 'hono';
 * import { idempotency } from 'oncely/hono';
 * const app = new Hono();
 * app.use('/payments/*', idempotency());
 * app.post('/payments', async (c) => c.json({ id: 'pay_1', ...(await c.req.json()) }, 201));
 */
export function idempotency(
  options?: HonoIdempotencyOptions,
): MiddlewareHandler & { engine: Engine<Context> } {
  const engine = new Engine<Context>(options);

  const idempotencyMiddleware: MiddlewareHandler = async function idempotencyMiddleware(c, next) {
    const fetchRequest = new FetchRequest(c.req.raw);
    let read: Uint8Array | undefined;
    const incoming: IncomingRequest<Context> = {
      method: fetchRequest.method,
      url: fetchRequest.url,
      header: (name) => fetchRequest.header(name),
      readBody: async (limit) => (read = await readBody(c, fetchRequest, limit)),
      raw: c,
    };
    const pending = engine.begin(incoming);
    if (pending === PASS) return next();
    const decision = await pending;
    if (decision.action === 'respond') return toFetchResponse(decision.response);
    // F1: the body was read for the fingerprint; give the handler a request it can read again
    // (also after an S2 fail-open pass). `c.req.json()` and friends read `c.req.raw`.
    if (read !== undefined)
      c.req.raw = new Request(c.req.raw, { body: read.byteLength === 0 ? null : (read as BodyInit) });
    if (decision.action === 'pass') return next();
    const { execution } = decision;
    try {
      await next();
    } catch (error) {
      // Hono renders thrown Errors into `c.res` through `onError` before `next()` settles (R3);
      // only non-Error throws get here, and no framework rendered them.
      c.res = undefined;
      c.res = toFetchResponse(await execution.fail(error));
      return;
    }
    const settled = await settleFetchResponse(execution, c.res);
    // Clear first: assigning over a response merges the old one's headers into the new one.
    c.res = undefined;
    c.res = settled;
  };
  return Object.assign(idempotencyMiddleware, { engine });
}

/** The body bytes under the R7 limit, also when an earlier middleware consumed them through `c.req`. */
async function readBody(c: Context, request: FetchRequest, limit: number): Promise<Uint8Array> {
  if (!c.req.raw.bodyUsed) return request.readBody(limit);
  const body = new Uint8Array(await c.req.arrayBuffer());
  if (body.byteLength > limit) throw new RequestTooLargeError(limit);
  return body;
}

export type { IdempotencyOptions } from '../core/options.js';
