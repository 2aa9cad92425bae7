/**
 * @module oncely/fastify: a Fastify 5 plugin that makes keyed POST and PATCH routes run once.
 */
import { Readable } from 'node:stream';
import type {
  FastifyPluginAsync,
  FastifyReply,
  FastifyRequest,
  onSendHookHandler,
  preParsingHookHandler,
  RouteOptions,
} from 'fastify';
import fp from 'fastify-plugin';
import { peekBuffered, peekNext, readStreamLimited } from '../core/body.js';
import {
  type Decision,
  Engine,
  type Execution,
  type IncomingRequest,
  type OutgoingResponse,
  PASS,
} from '../core/engine.js';
import { RequestTooLargeError } from '../core/errors.js';
import { IDEMPOTENCY_KEY_HEADER } from '../core/key.js';
import type { IdempotencyOptions } from '../core/options.js';
import type { Awaitable, Store } from '../core/store.js';
import { MemoryStore } from '../stores/memory.js';
import { headerMap, writeResponse } from './_node-http.js';

/** Options of the plugin; `scope` and `fingerprint` receive the `FastifyRequest` as `raw`. */
export type FastifyIdempotencyOptions = IdempotencyOptions<FastifyRequest>;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** oncely on this route: `false` to leave it alone, or options overriding the plugin's. */
    idempotency?: false | Omit<FastifyIdempotencyOptions, 'store'> | FastifyIdempotencyOptions;
  }
}

// The execution of each keyed request that won the lock, from preParsing until its onSend.
const executions = new WeakMap<FastifyRequest, Execution>();

/** Route-level hooks must stay arrays; Fastify accepts a function, an array or nothing. */
function appendHook<T>(existing: T | T[] | undefined, hook: T): T[] {
  if (existing === undefined) return [hook];
  return Array.isArray(existing) ? [...existing, hook] : [existing, hook];
}

/** The hooks of one route, bound to that route's engine (created once, at `onRoute`). */
function routeHooks(engine: Engine<FastifyRequest>) {
  // Callback style, not async: a request oncely answers must stop here, so `done` is never called
  // for it; an async hook would resolve and let parsing go on.
  const preParsing: preParsingHookHandler = function oncelyPreParsing(request, reply, payload, done) {
    if (engine.passes(request.method, request.headers[IDEMPOTENCY_KEY_HEADER] !== undefined)) {
      return done(null, payload);
    }
    const incoming = new FastifyIncoming(request, payload);
    const decision = engine.begin(incoming);
    if (decision === PASS) return done(null, payload);
    if (decision instanceof Promise) {
      decision.then(
        (decided) => proceed(decided, request, reply, incoming, done),
        (error: Error) => done(error),
      );
    } else proceed(decision, request, reply, incoming, done);
  };

  // Callback style, not async: unkeyed requests then cost a WeakMap look-up, not a promise and a
  // microtask hop before Fastify writes the reply.
  const onSend: onSendHookHandler<unknown> = function oncelyOnSend(request, reply, payload, done) {
    const execution = executions.get(request);
    if (execution === undefined) return done(null, payload);
    executions.delete(request);
    record(execution, reply, payload).then((recorded) => done(null, recorded), done);
  };

  return { preParsing, onSend };
}

/** Act on the engine's decision for a keyed request, at preParsing. */
function proceed(
  decision: Decision,
  request: FastifyRequest,
  reply: FastifyReply,
  incoming: FastifyIncoming,
  done: (error: Error | null, payload?: Readable) => void,
): void {
  if (decision.action === 'pass') {
    // S2 fail-open: the handler runs unprotected, with the body oncely already read.
    done(null, incoming.body());
    return;
  }
  if (decision.action === 'respond') {
    answer(reply, decision.response);
    return;
  }
  const execution = decision.execution;
  executions.set(request, execution);
  // R3, L5: a reply that never passes onSend (hijacked, written to reply.raw) still settles the
  // key when its connection closes, so a retry never re-runs the handler. One listener on keyed
  // requests only: an onResponse hook would make Fastify watch every response it sends.
  reply.raw.once('close', () => {
    if (reply.sent && executions.get(request) === execution) {
      executions.delete(request);
      void execution.fail(new Error('reply bypassed onSend'));
    }
  });
  // The body was read for the fingerprint; hand Fastify the same bytes to parse.
  done(null, incoming.body());
}

/**
 * R2, P1: a replay or a problem, written straight to the socket (the handler never runs). The
 * recorded response already went through the application's onSend hooks when it was first sent, so
 * it is not passed through them again, which would compress or sign the recorded bytes twice.
 * Headers set earlier in this request's lifecycle (onRequest hooks: CORS, request ids) are kept
 * unless the recorded response has its own.
 */
function answer(reply: FastifyReply, response: OutgoingResponse): void {
  reply.hijack();
  const earlier = reply.getHeaders() as Record<string, string | string[] | number>;
  const headers =
    Object.keys(earlier).length === 0
      ? response.headers
      : Object.assign(headerMap(earlier), response.headers);
  writeResponse(reply.raw, { status: response.status, headers, body: response.body });
}

/** The engine's view of a Fastify request; a class, so unkeyed requests allocate one small object. */
class FastifyIncoming implements IncomingRequest<FastifyRequest> {
  readonly method: string;
  readonly url: string;
  /** The body, once the engine has read it off the payload. */
  read: Uint8Array | undefined;
  /** The body, once the engine has peeked at it in the payload's buffer (the payload still holds it). */
  peeked: Uint8Array | undefined;

  constructor(
    readonly raw: FastifyRequest,
    private readonly payload: Readable,
  ) {
    this.method = raw.method;
    this.url = raw.url;
  }

  header(name: string): string | undefined {
    return joined(this.raw.headers[name]);
  }

  // F1: the fingerprint takes the raw bytes, read under the R7 limit before Fastify parses them.
  readBody(limit: number): Awaitable<Uint8Array> {
    const declared = this.raw.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) throw new RequestTooLargeError(limit);
    // A small body is usually in the payload's buffer already, or one microtask later: peeked at,
    // the payload itself goes on to Fastify.
    const peeked = peekBuffered(this.payload, declared);
    if (peeked === undefined) return this.#readLater(limit, declared);
    this.peeked = peeked;
    return peeked;
  }

  // Plain promise callbacks rather than an async function: one frame less on every keyed request.
  #readLater(limit: number, declared: string | undefined): Promise<Uint8Array> {
    return peekNext(this.payload, declared).then((peeked) => {
      this.peeked = peeked;
      if (peeked !== undefined) return peeked;
      // Past the limit the rest drains unread, so the connection stays usable for the 413.
      return readStreamLimited(this.payload, limit, { declaredLength: declared, onOverflow: 'drain' }).then(
        (read) => {
          this.read = read;
          return read;
        },
      );
    });
  }

  /** What Fastify parses: the payload, if the body was only peeked at; else the bytes read from it. */
  body(): Readable {
    if (this.peeked !== undefined || this.read === undefined) return this.payload;
    return new Replayable(this.read);
  }
}

/**
 * The body oncely read, as a fresh stream for Fastify's content-type parsers: one push of the
 * bytes, cheaper than `Readable.from`, which pulls through an async iterator.
 */
class Replayable extends Readable {
  #body: Uint8Array | undefined;

  constructor(body: Uint8Array) {
    super();
    this.#body = body;
  }

  override _read(): void {
    const body = this.#body;
    this.#body = undefined;
    if (body !== undefined && body.byteLength > 0) {
      this.push(Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength));
    }
    this.push(null);
  }
}

function joined(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(', ') : value;
}

/**
 * R1, R6: turn onSend's payload (string, Buffer, node or web stream, Response, nothing) into bytes,
 * record it, and only then let Fastify write it. Streams over `maxResponseBytes` and event streams
 * are recorded without body and passed on (R7); a stream that fails before its end records and
 * sends a 500 problem instead (R3).
 */
async function record(execution: Execution, reply: FastifyReply, payload: unknown): Promise<unknown> {
  if (payload instanceof Response) {
    reply.code(payload.status);
    payload.headers.forEach((value, name) => void reply.header(name, value));
    payload = payload.body;
  }
  const headers = () => headerMap(reply.getHeaders() as Record<string, string | string[] | number>);
  if (payload === undefined || payload === null) {
    await execution.complete({ status: reply.statusCode, headers: headers(), body: EMPTY });
    return payload;
  }
  if (typeof payload === 'string' || payload instanceof Uint8Array) {
    const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
    await execution.complete({ status: reply.statusCode, headers: headers(), body });
    return payload;
  }
  const stream = payload as AsyncIterable<Uint8Array | string>;
  if (execution.streams(headers())) {
    await execution.completeWithoutBody(reply.statusCode, headers());
    return payload;
  }
  const iterator = stream[Symbol.asyncIterator]();
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await iterator.next();
      if (done) break;
      const chunk = typeof value === 'string' ? Buffer.from(value) : Buffer.from(value);
      chunks.push(chunk);
      size += chunk.byteLength;
      if (size > execution.maxResponseBytes) {
        await execution.completeWithoutBody(reply.statusCode, headers());
        return Readable.from(resume(chunks, iterator), { objectMode: false });
      }
    }
  } catch (error) {
    const problem = await execution.fail(error);
    for (const name of Object.keys(reply.getHeaders())) reply.removeHeader(name);
    reply.code(problem.status).headers(problem.headers);
    return Buffer.from(problem.body);
  }
  const body = Buffer.concat(chunks, size);
  await execution.complete({ status: reply.statusCode, headers: headers(), body });
  return body;
}

async function* resume(buffered: Buffer[], rest: AsyncIterator<Uint8Array | string>): AsyncIterable<Buffer> {
  yield* buffered;
  for (;;) {
    const { done, value } = await rest.next();
    if (done) return;
    yield Buffer.from(value);
  }
}

const EMPTY = new Uint8Array(0);

const plugin: FastifyPluginAsync<FastifyIdempotencyOptions> = async function oncely(fastify, options) {
  // One store for the plugin and every per-route override, unless a route names its own.
  const ownStore = options.store === undefined ? new MemoryStore() : undefined;
  const store: Store = options.store ?? ownStore!;
  const base = { ...options, store };
  const engine = new Engine<FastifyRequest>(base);
  const hooks = routeHooks(engine);
  if (ownStore) fastify.addHook('onClose', () => ownStore.close());

  fastify.addHook('onRoute', function oncelyOnRoute(route: RouteOptions) {
    const config = route.config?.idempotency;
    if (config === false) return;
    // Per-route overrides are validated and turned into an engine once, when the route is declared.
    const routeEngine = config === undefined ? engine : new Engine<FastifyRequest>({ ...base, ...config });
    // K6, M2: a route whose methods no key takes effect on (GET, PUT…) is left without hooks, so its
    // requests cost nothing at all.
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    if (!methods.some((method) => routeEngine.handles(method))) return;
    const routed = routeEngine === engine ? hooks : routeHooks(routeEngine);
    // Route-level hooks run after the application's, so onSend sees the final payload (compression…).
    const hooked = route as unknown as Record<'preParsing' | 'onSend', unknown>;
    for (const name of ['preParsing', 'onSend'] as const) {
      hooked[name] = appendHook(hooked[name], routed[name]);
    }
  });
};

/**
 * The oncely Fastify plugin. Register it before the routes it protects (it hooks them as they are
 * declared); keyed POST and PATCH requests then run once and later ones get the recorded response.
 * Errors thrown by handlers are recorded as the response Fastify's error handler sends (R3).
 * Per route, `config: { idempotency: false }` opts out and `config: { idempotency: { ...options } }`
 * overrides the plugin's options (same store unless `store` is given).
 *
 * @param options see {@link IdempotencyOptions}; `store` defaults to one `MemoryStore` for the plugin
 * @example
 * import Fastify from 'fastify';
 * import { idempotency } from 'oncely/fastify';
 * const app = Fastify();
 * await app.register(idempotency, { ttlMs: 3_600_000 });
 * app.post('/payments', async (request, reply) => reply.code(201).send({ id: 'pay_1' }));
 */
export const idempotency = fp(plugin, { fastify: '5.x', name: 'oncely' });
export default idempotency;

export type { IdempotencyOptions } from '../core/options.js';
