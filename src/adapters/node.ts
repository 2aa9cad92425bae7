/**
 * @module oncely/node: idempotency for any `node:http` request listener.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Decision, Engine, PASS } from '../core/engine.js';
import { IDEMPOTENCY_KEY_HEADER } from '../core/key.js';
import type { IdempotencyOptions } from '../core/options.js';
import { captureResponse, NodeRequest, writeResponse } from './_node-http.js';

export type NodeListener = (req: IncomingMessage, res: ServerResponse) => unknown;

/**
 * Wrap a `node:http` listener so POST and PATCH requests with an `Idempotency-Key` run once and
 * replay afterwards. The listener reads the body, sets headers and writes as usual; a listener that
 * throws or rejects before responding records a 500 problem (R3).
 *
 * @param listener the `(req, res)` listener to protect
 * @param options see {@link IdempotencyOptions}; `store` defaults to a new `MemoryStore`
 * @example
 * import { createServer } from 'node:http';
 * import { withIdempotency } from 'oncely/node';
 * createServer(withIdempotency((req, res) => { res.statusCode = 201; res.end('ok'); })).listen(3000);
 */
export function withIdempotency(
  listener: NodeListener,
  options?: IdempotencyOptions<IncomingMessage>,
): NodeListener & { engine: Engine<IncomingMessage> } {
  const engine = new Engine<IncomingMessage>(options);

  function idempotentListener(req: IncomingMessage, res: ServerResponse): unknown {
    if (engine.passes(req.method ?? 'GET', req.headers[IDEMPOTENCY_KEY_HEADER] !== undefined)) {
      return listener(req, res);
    }
    const decision = engine.begin(new NodeRequest(req, req));
    if (decision === PASS) return listener(req, res);
    if (!(decision instanceof Promise)) return act(decision, listener, req, res);
    return decision.then(
      (decided) => act(decided, listener, req, res),
      (error: unknown) => {
        // Only the user's scope/fingerprint callbacks can throw here.
        if (!res.headersSent) {
          res.statusCode = 500;
          res.end();
        }
        process.emitWarning(error instanceof Error ? error : new Error(String(error)), 'OncelyWarning');
      },
    );
  }
  return Object.assign(idempotentListener, { engine });
}

function act(decision: Decision, listener: NodeListener, req: IncomingMessage, res: ServerResponse): unknown {
  if (decision.action === 'pass') return listener(req, res);
  if (decision.action === 'respond') return writeResponse(res, decision.response);
  const capture = captureResponse(res, decision.execution);
  let ran: unknown;
  try {
    ran = listener(req, res);
  } catch (error) {
    capture.fail(error);
    return undefined;
  }
  // R3: a listener that rejects gets the same treatment as one that throws.
  if (typeof (ran as PromiseLike<unknown> | undefined)?.then !== 'function') return ran;
  return Promise.resolve(ran).catch((error: unknown) => capture.fail(error));
}

export type { IdempotencyOptions } from '../core/options.js';
