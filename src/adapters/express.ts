/**
 * @module oncely/express: idempotency middleware for Express 4 and 5.
 */
import type { NextFunction, Request, Response } from 'express';
import { type Decision, Engine, PASS } from '../core/engine.js';
import { IDEMPOTENCY_KEY_HEADER } from '../core/key.js';
import type { IdempotencyOptions } from '../core/options.js';
import { captureResponse, NodeRequest, writeResponse } from './_node-http.js';

/** An Express middleware carrying the engine it runs (for `engine.close()` and tests). */
export type IdempotencyMiddleware = ((req: Request, res: Response, next: NextFunction) => void) & {
  engine: Engine<Request>;
};

/**
 * Express middleware: POST and PATCH requests with an `Idempotency-Key` run their handler once;
 * retries get the recorded response with `Idempotent-Replayed: true`.
 *
 * Mount it after authentication (the default scope is the `Authorization` header, S1) and before
 * the routes it protects. It may sit before or after the body parsers: mounted before, it reads the
 * body and hands it back intact to `express.json()` and friends; mounted after, it fingerprints the
 * parsed `req.body` (see docs/frameworks/express.md). Every response leaves through `res`, so what
 * is recorded is exactly what the client got — including the response of Express's error handling
 * (or yours) when a handler throws or calls `next(err)` (R3).
 *
 * @param options see {@link IdempotencyOptions}; `store` defaults to a new `MemoryStore`, and the
 *   `scope`/`fingerprint` callbacks receive the Express `req` as `request.raw`
 * @example
 * import express from 'express';
 * import { idempotency } from 'oncely/express';
 * const app = express();
 * app.use(idempotency({ store }));
 * app.post('/payments', express.json(), (req, res) => res.status(201).json(charge(req.body)));
 */
export function idempotency(options?: IdempotencyOptions<Request>): IdempotencyMiddleware {
  const engine = new Engine<Request>(options);

  function idempotencyMiddleware(req: Request, res: Response, next: NextFunction): void {
    if (engine.passes(req.method, req.headers[IDEMPOTENCY_KEY_HEADER] !== undefined)) {
      next();
      return;
    }
    // originalUrl: the fingerprint (F1) must not depend on where the middleware is mounted.
    const decision = engine.begin(new NodeRequest(req, req, req.originalUrl, () => req.body));
    if (decision === PASS) {
      next();
      return;
    }
    // Only the user's scope/fingerprint callbacks can reject: the app's error, for Express.
    if (decision instanceof Promise) decision.then((decided) => act(decided, res, next), next);
    else act(decision, res, next);
  }
  return Object.assign(idempotencyMiddleware, { engine });
}

function act(decision: Decision, res: Response, next: NextFunction): void {
  if (decision.action === 'pass') next();
  else if (decision.action === 'respond') writeResponse(res, decision.response);
  else {
    captureResponse(res, decision.execution);
    next();
  }
}

export type { IdempotencyOptions } from '../core/options.js';
