// Floor for replays: answer every keyed request one microtask later with a constant 201 written
// straight to reply.raw, as oncely writes a replay, but with no engine, store or body peek.
import fp from 'fastify-plugin';

// About the size of the handler's answer (bench/lib/handler.mjs).
const body = JSON.stringify({
  id: 'ord_floor',
  object: 'order',
  status: 'created',
  customer: 'cus_4f8e2a91c0d34b6e',
  amount: 4200,
  currency: 'eur',
  description: 'Annual subscription, plan Pro, 3 seats, billed yearly',
  lines: 2,
  livemode: false,
  created: 1735689600,
  metadata: { source: 'checkout', campaign: 'spring-2025' },
});

export const idempotency = fp(
  async (fastify) => {
    fastify.addHook('onRoute', (route) => {
      route.preParsing = [
        (request, reply, payload, done) => {
          if (request.headers['idempotency-key'] === undefined) return done(null, payload);
          Promise.resolve().then(() => {
            reply.hijack();
            reply.raw.writeHead(201, {
              'content-type': 'application/json; charset=utf-8',
              'idempotent-replayed': 'true',
              'content-length': Buffer.byteLength(body),
            });
            reply.raw.end(body);
          });
        },
      ];
    });
  },
  { fastify: '5.x', name: 'floor-replay' },
);
