/**
 * @module oncely/fetch: idempotency for any Fetch-API handler (Hono's app.fetch, Next.js route
 * handlers, Bun, Deno, Cloudflare Workers).
 */
import { readLimited } from '../core/body.js';
import { Engine, type Execution, type IncomingRequest, type OutgoingResponse, PASS } from '../core/engine.js';
import type { IdempotencyOptions } from '../core/options.js';
import type { HeaderMap } from '../core/store.js';

/** The engine's view of a Fetch `Request`. */
export class FetchRequest implements IncomingRequest<Request> {
  readonly method: string;
  readonly url: string;
  /** The body, once the engine has read it. */
  body: Uint8Array | undefined;

  constructor(readonly raw: Request) {
    this.method = raw.method;
    this.url = pathAndQuery(raw.url);
  }

  header(name: string): string | undefined {
    return this.raw.headers.get(name) ?? undefined;
  }

  async readBody(limit: number): Promise<Uint8Array> {
    const stream = this.raw.body as AsyncIterable<Uint8Array> | null;
    this.body = await readLimited(stream, limit, this.raw.headers.get('content-length'));
    return this.body;
  }

  /** The request for the app: the original, or a copy carrying the body the engine consumed. */
  forApp(): Request {
    const body = this.body;
    if (body === undefined) return this.raw;
    return new Request(this.raw, { body: body.byteLength === 0 ? null : (body as BodyInit) });
  }
}

/** `/path?query` of an absolute URL, without parsing all of it. */
export function pathAndQuery(url: string): string {
  const scheme = url.indexOf('://');
  const slash = url.indexOf('/', scheme === -1 ? 0 : scheme + 3);
  if (slash === -1) return '/';
  const hash = url.indexOf('#', slash);
  return hash === -1 ? url.slice(slash) : url.slice(slash, hash);
}

/** A Fetch `Response` from an engine response. */
export function toFetchResponse(response: OutgoingResponse): Response {
  // A plain record when no field repeats: cheaper to build, and @hono/node-server writes it as is.
  let headers: Record<string, string> | Headers = response.headers as Record<string, string>;
  for (const name in response.headers) {
    if (Array.isArray(response.headers[name])) {
      headers = new Headers();
      for (const [field, value] of Object.entries(response.headers)) {
        if (Array.isArray(value)) for (const item of value) headers.append(field, item);
        else headers.set(field, value);
      }
      break;
    }
  }
  const body = response.body.byteLength === 0 || isNullBodyStatus(response.status) ? null : response.body;
  return new Response(body as BodyInit | null, { status: response.status, headers });
}

/** Fetch headers as a map; repeated fields other than Set-Cookie arrive joined. */
export function fetchHeaderMap(headers: Headers): HeaderMap {
  const map: HeaderMap = {};
  headers.forEach((value, name) => {
    map[name] = value;
  });
  return map;
}

/**
 * Hand a handler's Fetch response to `execution`: buffer and record it (R1, R6), or, past
 * `maxResponseBytes` or for an event stream, record its head and stream it on (R7). A body that
 * fails midway records a 500 problem (R3).
 */
export async function settleFetchResponse(execution: Execution, response: Response): Promise<Response> {
  const headers = fetchHeaderMap(response.headers);
  const held = heldBody(response);
  if (held !== undefined) {
    // The body is already in memory and unread: record it and send the same response on.
    // `complete` itself records only the head of an event stream or an oversized body (R7).
    const body = typeof held === 'string' ? encoder.encode(held) : held;
    await execution.complete({ status: response.status, headers, body });
    return response;
  }
  if (response.body === null || execution.streams(headers)) {
    if (response.body === null) {
      await execution.complete({ status: response.status, headers, body: new Uint8Array(0) });
    } else {
      await execution.completeWithoutBody(response.status, headers);
    }
    return response;
  }
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
      if (size > execution.maxResponseBytes) {
        await execution.completeWithoutBody(response.status, headers);
        return new Response(resumeStream(chunks, reader), {
          status: response.status,
          statusText: response.statusText,
          headers: response.headers,
        });
      }
    }
  } catch (error) {
    return toFetchResponse(await execution.fail(error));
  }
  const body = chunks.length === 1 ? chunks[0]! : concat(chunks, size);
  await execution.complete({ status: response.status, headers, body });
  return new Response(body.byteLength === 0 ? null : (body as BodyInit), {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

/**
 * Wrap a Fetch handler so POST and PATCH requests with an `Idempotency-Key` run once and replay
 * afterwards. The handler still reads the request body as usual. Extra arguments (Workers' `env`
 * and `ctx`, Hono's bindings) are passed through.
 *
 * @param handler `(request, ...rest) => Response | Promise<Response>`
 * @param options see {@link IdempotencyOptions}; `store` defaults to a new `MemoryStore`
 * @example
 * import { withIdempotency } from 'oncely/fetch';
 * export const POST = withIdempotency(async (request) => Response.json(await charge(request), { status: 201 }));
 */
export function withIdempotency<Args extends unknown[]>(
  handler: (request: Request, ...rest: Args) => Response | Promise<Response>,
  options?: IdempotencyOptions<Request>,
): ((request: Request, ...rest: Args) => Promise<Response>) & { engine: Engine<Request> } {
  const engine = new Engine<Request>(options);

  async function idempotentHandler(request: Request, ...rest: Args): Promise<Response> {
    const incoming = new FetchRequest(request);
    const pending = engine.begin(incoming);
    if (pending === PASS) return handler(request, ...rest);
    const decision = pending instanceof Promise ? await pending : pending;
    // fail-open passes after the body was read: hand the app a copy that still has it.
    if (decision.action === 'pass') return handler(incoming.forApp(), ...rest);
    if (decision.action === 'respond') return toFetchResponse(decision.response);
    const { execution } = decision;
    let response: Response;
    try {
      response = await handler(incoming.forApp(), ...rest);
    } catch (error) {
      return toFetchResponse(await execution.fail(error));
    }
    return settleFetchResponse(execution, response);
  }
  return Object.assign(idempotentHandler, { engine });
}

const encoder = new TextEncoder();

/**
 * The string or bytes a lightweight Response of @hono/node-server holds before anything reads it
 * (its own `cache` slot: status, body, headers). Reading `body` would build a web stream over
 * them, and re-sending them a second Response; undefined for every other Response.
 */
function heldBody(response: Response): string | Uint8Array | undefined {
  for (const symbol of Object.getOwnPropertySymbols(response)) {
    if (symbol.description !== 'cache') continue;
    const cache = (response as unknown as Record<symbol, unknown>)[symbol];
    if (!Array.isArray(cache) || cache.length !== 3 || cache[0] !== response.status) return undefined;
    const body: unknown = cache[1];
    return typeof body === 'string' || body instanceof Uint8Array ? body : undefined;
  }
  return undefined;
}

function isNullBodyStatus(status: number): boolean {
  return status === 101 || status === 204 || status === 205 || status === 304;
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

function resumeStream(
  buffered: Uint8Array[],
  reader: ReadableStreamDefaultReader<Uint8Array>,
): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of buffered) controller.enqueue(chunk);
    },
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

export type { IdempotencyOptions } from '../core/options.js';
