/**
 * @module oncely/koa: idempotency middleware for Koa 2 and 3.
 */
import { Stream } from 'node:stream';
import type { Context, Next } from 'koa';
import { Engine, PASS } from '../core/engine.js';
import type { IdempotencyOptions } from '../core/options.js';
import { captureResponse, NodeRequest, writeResponse } from './_node-http.js';

/** A Koa middleware carrying the engine it runs (for `engine.close()` and tests). */
export type IdempotencyMiddleware = ((ctx: Context, next: Next) => Promise<void>) & {
  engine: Engine<Context>;
};

/**
 * Koa middleware: POST and PATCH requests with an `Idempotency-Key` run the rest of the chain once;
 * retries get the recorded response with `Idempotent-Replayed: true`.
 *
 * Koa writes the response after the middleware chain settles, so oncely records at `ctx.res`, the
 * node response underneath: whatever Koa sends — `ctx.body` as a string, Buffer, JSON or stream, and
 * the error response of `ctx.onerror` when a middleware throws (R3) — is what is recorded. Replays and
 * oncely's own problems are written to `ctx.res` directly (`ctx.respond = false`), byte for byte,
 * so middleware upstream that transforms bodies (compression) does not transform them twice.
 *
 * Mount it after authentication (the default scope is the `Authorization` header, S1). A body
 * parser may run before or after it: after, it reads `ctx.req` itself and hands it back intact;
 * before, it fingerprints `ctx.request.body` (see docs/frameworks/koa.md).
 *
 * @param options see {@link IdempotencyOptions}; `store` defaults to a new `MemoryStore`, and the
 *   `scope`/`fingerprint` callbacks receive the Koa `ctx` as `request.raw`
 * @example
 * import Koa from 'koa';
 * import { idempotency } from 'oncely/koa';
 * const app = new Koa();
 * app.use(idempotency({ store }));
 * app.use(async (ctx) => { ctx.status = 201; ctx.body = { id: 'pay_1' }; });
 */
export function idempotency(options?: IdempotencyOptions<Context>): IdempotencyMiddleware {
  const engine = new Engine<Context>(options);

  async function idempotencyMiddleware(ctx: Context, next: Next): Promise<void> {
    // originalUrl: the fingerprint (F1) must not depend on routers rewriting ctx.url.
    const parsed = () => (ctx.request as { body?: unknown }).body;
    const decided = await engine.begin(new NodeRequest(ctx.req, ctx, ctx.originalUrl, parsed));
    if (decided === PASS || decided.action === 'pass') return next();
    if (decided.action === 'respond') {
      ctx.respond = false;
      writeResponse(ctx.res, decided.response);
      return;
    }
    // Errors are left to Koa: its error response goes through ctx.res and is recorded (R3).
    const captured = captureResponse(ctx.res, decided.execution);
    await next();
    // R3: Koa 3 pipes a stream body with pipeline(), which aborts the response when the stream
    // fails midway; Koa 2 uses .pipe() and leaves it open, the key in flight and the client waiting.
    // Once Koa has reacted (a turn later), a response still being buffered is failed: the 500 problem
    // is recorded and sent. Where Koa already ended or aborted it, fail() does nothing.
    const body: unknown = ctx.body;
    if (body instanceof Stream) body.once('error', (error) => setImmediate(() => captured.fail(error)));
  }
  return Object.assign(idempotencyMiddleware, { engine });
}

export type { IdempotencyOptions } from '../core/options.js';
