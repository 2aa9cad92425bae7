/**
 * Framework benchmark server. config: { framework: 'express'|'fastify'|'hono',
 * layer: 'none'|'noop'|'oncely'|'express-idempotency'|'node-idempotency' } ('noop': a middleware or
 * hooks that do nothing, the control for what any middleware costs). Every layer keeps records in
 * memory. The @node-idempotency/core driver below follows what its Express and Fastify plugins do
 * (onRequest before the handler, onResponse with the sent payload, replay = status + body); those
 * plugins are not on npm at a version for Express 5 / Fastify 5, so the core is driven directly.
 * `config.dist` (an absolute path to another build's dist/, see frameworks.mjs --compare) loads
 * oncely from there instead of this checkout's.
 */
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';
import { closeServer, listen, runChild } from '../lib/child.mjs';
import { order, PATH } from '../lib/handler.mjs';

/** The URL of one of oncely's built modules: this checkout's, or `config.dist`'s. */
function oncely(config, module) {
  return config.dist ? pathToFileURL(`${config.dist}/${module}`).href : `../../dist/${module}`;
}

async function nodeIdempotency() {
  const { Idempotency, IdempotencyError } = await import('@node-idempotency/core');
  const { MemoryStorageAdapter } = await import('@node-idempotency/storage-adapter-memory');
  return { core: new Idempotency(new MemoryStorageAdapter(), {}), IdempotencyError };
}

function asParams(request) {
  return { headers: request.headers, body: request.body, path: request.url, method: request.method };
}

const problemStatus = { REQUEST_IN_PROGRESS: 409, IDEMPOTENCY_FINGERPRINT_MISSMATCH: 422 };

async function expressApp(layer, config) {
  const express = (await import('express')).default;
  const app = express();
  const stores = [];
  let isHit = () => false;
  if (layer === 'oncely') {
    const { idempotency } = await import(oncely(config, 'adapters/express.js'));
    const { MemoryStore } = await import(oncely(config, 'index.js'));
    const store = new MemoryStore();
    stores.push(store);
    app.use(idempotency({ store }));
  } else if (layer === 'noop') {
    // The control: one middleware that does nothing, the floor of any middleware's cost.
    app.use(function noop(_req, _res, next) {
      next();
    });
  } else if (layer === 'express-idempotency') {
    const peer = (await import('express-idempotency')).default;
    app.use(express.json());
    app.use(peer.idempotency());
    const service = peer.getSharedIdempotencyService();
    isHit = (req) => service.isHit(req);
  } else if (layer === 'node-idempotency') {
    const { core, IdempotencyError } = await nodeIdempotency();
    app.use(express.json());
    app.use(async (req, res, next) => {
      const params = asParams(req);
      try {
        const recorded = await core.onRequest(params);
        if (!recorded) {
          const send = res.send.bind(res);
          res.send = (payload) => {
            let body = payload;
            if (typeof payload === 'string' && String(res.getHeader('content-type')).includes('json')) {
              body = JSON.parse(payload);
            }
            const additional = { statusCode: res.statusCode };
            void core.onResponse(
              params,
              res.statusCode < 400 ? { additional, body } : { additional, error: body },
            );
            return send(payload);
          };
          next();
          return;
        }
        res.status(recorded.additional?.statusCode ?? 200);
        res.setHeader('idempotent-replayed', 'true');
        if (recorded.body) res.send(recorded.body);
        else next(recorded.error);
      } catch (error) {
        if (!(error instanceof IdempotencyError)) throw error;
        res.status(problemStatus[error.code] ?? 400);
        next(error);
      }
    });
  } else if (layer !== 'none') throw new Error(`unknown layer ${layer}`);
  app.post(PATH, express.json(), (req, res) => {
    if (isHit(req)) return;
    res.status(201).json(order(req.body));
  });
  const server = createServer(app);
  return {
    listen: () => listen(server),
    async close() {
      await closeServer(server);
      for (const store of stores) await store.close();
    },
  };
}

async function fastifyApp(layer, config) {
  const Fastify = (await import('fastify')).default;
  const app = Fastify({ logger: false });
  const stores = [];
  if (layer === 'oncely') {
    const { idempotency } = await import(oncely(config, 'adapters/fastify.js'));
    const { MemoryStore } = await import(oncely(config, 'index.js'));
    const store = new MemoryStore();
    stores.push(store);
    await app.register(idempotency, { store });
  } else if (layer === 'noop') {
    // The control: the hooks oncely adds to each route (preParsing, onSend), doing nothing.
    app.addHook('preParsing', (_request, _reply, payload, done) => done(null, payload));
    app.addHook('onSend', (_request, _reply, payload, done) => done(null, payload));
  } else if (layer === 'node-idempotency') {
    const { core, IdempotencyError } = await nodeIdempotency();
    app.addHook('preHandler', async (request, reply) => {
      try {
        const recorded = await core.onRequest(asParams(request));
        if (!recorded) return;
        reply.status(recorded.additional?.statusCode ?? 200);
        reply.header('idempotent-replayed', 'true');
        return reply.send(recorded.body ?? recorded.error);
      } catch (error) {
        if (!(error instanceof IdempotencyError)) throw error;
        return reply.status(problemStatus[error.code] ?? 400).send(error);
      }
    });
    app.addHook('onSend', async (request, reply, payload) => {
      const additional = { statusCode: reply.statusCode };
      await core.onResponse(
        asParams(request),
        reply.statusCode < 400 ? { additional, body: payload } : { additional, error: payload },
      );
    });
  } else if (layer !== 'none') throw new Error(`unknown layer ${layer}`);
  app.post(PATH, async (request, reply) => {
    reply.code(201);
    return order(request.body);
  });
  await app.ready();
  return {
    async listen() {
      await app.listen({ host: '127.0.0.1', port: 0 });
      return app.server.address().port;
    },
    async close() {
      await app.close();
      for (const store of stores) await store.close();
    },
  };
}

async function honoApp(layer, config) {
  const { Hono } = await import('hono');
  const { serve } = await import('@hono/node-server');
  const app = new Hono();
  const stores = [];
  if (layer === 'oncely') {
    const { idempotency } = await import(oncely(config, 'adapters/hono.js'));
    const { MemoryStore } = await import(oncely(config, 'index.js'));
    const store = new MemoryStore();
    stores.push(store);
    app.use(PATH, idempotency({ store }));
  } else if (layer === 'noop') {
    // The control: one middleware that does nothing, the floor of any middleware's cost.
    app.use(PATH, (_c, next) => next());
  } else if (layer !== 'none') throw new Error(`unknown layer ${layer}`);
  app.post(PATH, async (c) => c.json(order(await c.req.json()), 201));
  let server;
  return {
    listen: () =>
      new Promise((resolve) => {
        server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 }, (address) =>
          resolve(address.port),
        );
      }),
    async close() {
      await closeServer(server);
      for (const store of stores) await store.close();
    },
  };
}

runChild(async (config) => {
  const { framework, layer } = config;
  if (framework === 'express') return expressApp(layer, config);
  if (framework === 'fastify') return fastifyApp(layer, config);
  if (framework === 'hono') return honoApp(layer, config);
  throw new Error(`unknown framework ${framework}`);
});
