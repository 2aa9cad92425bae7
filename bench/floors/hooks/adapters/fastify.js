// Floor: the two hooks oncely adds to each route, each taking one asynchronous hop on keyed
// requests and doing nothing else. What the hook structure alone costs.
import fp from 'fastify-plugin';

const keyed = new WeakSet();

export const idempotency = fp(
  async (fastify) => {
    fastify.addHook('onRoute', (route) => {
      route.preParsing = [
        (request, _reply, payload, done) => {
          if (request.headers['idempotency-key'] === undefined) return done(null, payload);
          keyed.add(request);
          Promise.resolve().then(() => done(null, payload));
        },
      ];
      route.onSend = [
        (request, _reply, payload, done) => {
          if (!keyed.has(request)) return done(null, payload);
          Promise.resolve().then(() => done(null, payload));
        },
      ];
    });
  },
  { fastify: '5.x', name: 'floor-hooks' },
);
