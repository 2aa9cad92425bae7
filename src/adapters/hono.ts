/**
 * @module oncely/hono: Hono 4 middleware that makes keyed POST and PATCH requests run once, on Node
 * (@hono/node-server) and on every Fetch runtime.
 */
import type { Context, MiddlewareHandler } from 'hono';
import { readStreamLimited } from '../core/body.js';
import { Engine, type IncomingRequest, PASS } from '../core/engine.js';
import { RequestTooLargeError } from '../core/errors.js';
import type { IdempotencyOptions } from '../core/options.js';
import { FetchRequest, pathAndQuery, settleFetchResponse, toFetchResponse } from './fetch.js';

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
    const incoming = new HonoIncoming(c);
    const pending = engine.begin(incoming);
    if (pending === PASS) return next();
    const decision = pending instanceof Promise ? await pending : pending;
    if (decision.action === 'respond') return toFetchResponse(decision.response);
    // F1: the body was read for the fingerprint; give the handler a request it can read again
    // (also after an S2 fail-open pass). `c.req.json()` and friends read `c.req.raw`.
    incoming.rearm();
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
    const response = c.res;
    const settled = await settleFetchResponse(execution, response);
    if (settled === response) return;
    // Clear first: assigning over a response merges the old one's headers into the new one.
    c.res = undefined;
    c.res = settled;
  };
  return Object.assign(idempotencyMiddleware, { engine });
}

/** The engine's view of a Hono request. */
class HonoIncoming implements IncomingRequest<Context> {
  readonly method: string;
  readonly url: string;
  /** The body, once read; `viaNode` when it was read from Node's request and left there as `rawBody`. */
  #read: Uint8Array | undefined;
  #viaNode = false;

  constructor(readonly raw: Context) {
    this.method = raw.req.method;
    this.url = pathAndQuery(raw.req.url);
  }

  header(name: string): string | undefined {
    return this.raw.req.raw.headers.get(name) ?? undefined;
  }

  async readBody(limit: number): Promise<Uint8Array> {
    const c = this.raw;
    const node = unreadNodeRequest(c);
    if (node !== undefined) {
      const body = await readStreamLimited(node, limit, {
        declaredLength: node.headers['content-length'] as string | undefined,
        onOverflow: 'drain',
      });
      // @hono/node-server builds the handler's Request over `rawBody` when one is set, so the
      // handler reads these bytes without a second Request and web stream.
      node.rawBody = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
      this.#viaNode = true;
      this.#read = body;
      return body;
    }
    this.#read = await readBody(c, new FetchRequest(c.req.raw), limit);
    return this.#read;
  }

  /** Make the body the engine consumed readable again for the handler. */
  rearm(): void {
    const read = this.#read;
    if (read === undefined || this.#viaNode) return;
    const c = this.raw;
    c.req.raw = new Request(c.req.raw, { body: read.byteLength === 0 ? null : (read as BodyInit) });
  }
}

/** What oncely uses of Node's request under @hono/node-server (`c.env.incoming`). */
interface NodeBodyStream {
  readonly readableDidRead: boolean;
  readonly headers: Record<string, string | string[] | undefined>;
  rawBody?: Buffer;
  on(event: string, listener: (...args: never[]) => void): unknown;
  removeListener(event: string, listener: (...args: never[]) => void): unknown;
  pause(): unknown;
  resume(): unknown;
}

/**
 * Under @hono/node-server, the Node request whose body nobody has read yet, when `c.req.raw` is
 * still its lightweight Request (no full Request built, so none holds a stream over that body):
 * then oncely can read the bytes straight from Node. Undefined on other runtimes and otherwise.
 */
function unreadNodeRequest(c: Context): NodeBodyStream | undefined {
  const env = c.env as { incoming?: unknown } | undefined;
  const incoming = env?.incoming as Partial<NodeBodyStream> | null | undefined;
  if (
    typeof incoming !== 'object' ||
    incoming === null ||
    typeof incoming.on !== 'function' ||
    incoming.readableDidRead !== false ||
    incoming.rawBody !== undefined
  ) {
    return undefined;
  }
  const raw = c.req.raw as unknown as Record<symbol, unknown>;
  let ours = false;
  for (const symbol of Object.getOwnPropertySymbols(raw)) {
    if (symbol.description === 'requestCache') return undefined;
    if (symbol.description === 'incomingKey' && raw[symbol] === incoming) ours = true;
  }
  return ours ? (incoming as NodeBodyStream) : undefined;
}

/** The body bytes under the R7 limit, also when an earlier middleware consumed them through `c.req`. */
async function readBody(c: Context, request: FetchRequest, limit: number): Promise<Uint8Array> {
  if (!c.req.raw.bodyUsed) return request.readBody(limit);
  const body = new Uint8Array(await c.req.arrayBuffer());
  if (body.byteLength > limit) throw new RequestTooLargeError(limit);
  return body;
}

export type { IdempotencyOptions } from '../core/options.js';
