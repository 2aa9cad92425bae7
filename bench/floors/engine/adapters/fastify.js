// Floor for new keys: the real engine (begin, then complete with the response) behind the same two
// hooks, against a store that keeps nothing, and without reading the body (a fixed one is
// fingerprinted). What the engine costs inside a server, apart from the store and the body peek.
import fp from 'fastify-plugin';
import { Engine } from '../../../../dist/index.js';

const executions = new WeakMap();
const fixedBody = Buffer.from('{"amount":1}');
const nothingKept = {
  acquire: () => Promise.resolve({ state: 'acquired' }),
  complete: () => Promise.resolve(true),
  renew: () => Promise.resolve(true),
  release: () => Promise.resolve(true),
  get: () => Promise.resolve(undefined),
  sweep: () => Promise.resolve(0),
  close: () => Promise.resolve(),
};

export const idempotency = fp(
  async (fastify) => {
    const engine = new Engine({ store: nothingKept });
    fastify.addHook('onRoute', (route) => {
      route.preParsing = [
        (request, _reply, payload, done) => {
          const decision = engine.begin({
            method: request.method,
            url: request.url,
            raw: request,
            header: (name) => request.headers[name],
            readBody: () => Promise.resolve(fixedBody),
          });
          if (decision.action === 'pass') return done(null, payload);
          decision.then((decided) => {
            executions.set(request, decided.execution);
            done(null, payload);
          });
        },
      ];
      route.onSend = [
        (request, reply, payload, done) => {
          const execution = executions.get(request);
          if (execution === undefined) return done(null, payload);
          execution
            .complete({ status: reply.statusCode, headers: {}, body: Buffer.from(payload) })
            .then(() => done(null, payload));
        },
      ];
    });
  },
  { fastify: '5.x', name: 'floor-engine' },
);
