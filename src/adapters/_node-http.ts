/**
 * @module Shared by the adapters built on node:http (node, Express, Koa, NestJS): reading the body
 * so the app can read it again, capturing every way a response leaves, writing engine responses.
 */
import {
  type IncomingMessage,
  type OutgoingHttpHeaders,
  OutgoingMessage,
  type ServerResponse,
} from 'node:http';
import { Readable } from 'node:stream';
import { peekBuffered, readLimited, readStreamLimited } from '../core/body.js';
import type { Execution, IncomingRequest, OutgoingResponse } from '../core/engine.js';
import { RequestTooLargeError } from '../core/errors.js';
import type { HeaderMap } from '../core/store.js';

/**
 * The engine's view of a node:http request; the body is read only when asked.
 * `parsedBody`, when given, returns what a body parser mounted earlier made of a body it already
 * consumed (Express's `req.body`, Koa's `ctx.request.body`): see {@link parsedBodyBytes}.
 */
export class NodeRequest<Raw = IncomingMessage> implements IncomingRequest<Raw> {
  readonly method: string;
  readonly url: string;

  constructor(
    readonly req: IncomingMessage,
    readonly raw: Raw,
    url?: string,
    readonly parsedBody?: () => unknown,
  ) {
    this.method = req.method ?? 'GET';
    this.url = url ?? req.url ?? '/';
  }

  header(name: string): string | undefined {
    const value = this.req.headers[name];
    return Array.isArray(value) ? value.join(', ') : value;
  }

  readBody(limit: number): Promise<Uint8Array> {
    const req = this.req;
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      return Promise.reject(new RequestTooLargeError(limit));
    }
    const buffered = peekBuffered(req, declared);
    if (buffered !== undefined) return Promise.resolve(buffered);
    if (this.parsedBody !== undefined && (req.readableDidRead || req.readableEnded)) {
      // Something read the stream before us: its bytes are gone, fingerprint what was made of them.
      const body = parsedBodyBytes(this.parsedBody());
      if (body.byteLength > limit) return Promise.reject(new RequestTooLargeError(limit));
      return Promise.resolve(body);
    }
    if (req.readableEnded || req.destroyed) return readByIterator(req, limit);
    // node emits 'request' on the head, then parses the rest of the packet, where a small body
    // usually is: one microtask later it sits in the buffer whole, to be peeked at, not streamed.
    return Promise.resolve().then(() => peekBuffered(req, declared) ?? readByListeners(req, limit));
  }
}

/**
 * The usual case, a message still to be read. The body is re-armed once node is done with the
 * ended message: right after 'end' it auto-destroys it and emits 'close' a few ticks later; a fresh
 * state swapped in any earlier would be destroyed (and the socket with it, as "aborted").
 */
function readByListeners(req: IncomingMessage, limit: number): Promise<Uint8Array> {
  // R7: past the limit, stop reading, as an iterator left mid-body would.
  return readStreamLimited(req, limit, { onOverflow: 'pause', afterEnd: (body) => rearmBody(req, body) });
}

/** A message already ended or destroyed: an iterator reports either as node does. */
async function readByIterator(req: IncomingMessage, limit: number): Promise<Uint8Array> {
  const body = await readLimited(req.iterator({ destroyOnReturn: false }), limit);
  rearmBody(req, body);
  return body;
}

/**
 * F1 when a body parser ran first: the bytes a parsed body stands for. A Buffer or Uint8Array
 * (`express.raw()`) is the raw body itself; a string (`express.text()`) is encoded as UTF-8;
 * anything else (`express.json()`, `express.urlencoded()`) is its JSON serialization; no body is empty.
 * Equal requests give equal bytes; JSON bodies that differ only in whitespace count as the same
 * request, which is what an app that parses first means by "the same body".
 */
export function parsedBodyBytes(body: unknown): Uint8Array {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (body instanceof Uint8Array) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  return Buffer.from(JSON.stringify(body) ?? '', 'utf8');
}

/**
 * Make a fully read request readable again from the start, so the app's own body parsers
 * (or `for await (const chunk of req)`) get the whole body although oncely read it first.
 * It gives the message a fresh readable state holding the bytes; headers and socket are untouched.
 */
export function rearmBody(req: IncomingMessage, body: Uint8Array): void {
  const fresh = new Readable({ read() {} });
  (req as unknown as { _readableState: unknown })._readableState = (
    fresh as unknown as { _readableState: unknown }
  )._readableState;
  if (body.byteLength > 0) req.push(body);
  req.push(null);
}

/** Write an engine response (replay or problem) with node:http. */
export function writeResponse(res: ServerResponse, response: OutgoingResponse): void {
  const headers: OutgoingHttpHeaders = { ...response.headers, 'content-length': response.body.byteLength };
  res.writeHead(response.status, headers);
  const [chunk, encoding] = endArguments(response.body);
  if (encoding === undefined) res.end(chunk);
  else res.end(chunk, encoding);
}

// Up to this size a body is handed to node as a latin1 string: node then sends head and body as one
// chunk, where a Buffer goes out as a second chunk of a writev (measurably dearer per response).
// latin1 maps each byte to one character and back, so the bytes on the wire are unchanged.
const COALESCE_LIMIT = 16 * 1024;

/** The arguments of the final `end(chunk, encoding)` that sends `body` byte for byte. */
function endArguments(body: Uint8Array): [Uint8Array | string, BufferEncoding | undefined] {
  if (body.byteLength === 0 || body.byteLength > COALESCE_LIMIT) return [body, undefined];
  return [Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('latin1'), 'latin1'];
}

/** node's header object, values normalised to strings. */
export function headerMap(headers: OutgoingHttpHeaders): HeaderMap {
  const map: HeaderMap = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    map[name] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return map;
}

type WriteCallback = (error?: Error | null) => void;
type Write = (chunk: unknown, encoding?: unknown, callback?: unknown) => boolean;
type End = (chunk?: unknown, encoding?: unknown, callback?: unknown) => ServerResponse;
type WriteHead = (...args: unknown[]) => ServerResponse;

// While a response is buffered, `res.headersSent` must read true once the handler wrote (see
// captureResponse). One accessor shared by every captured response, reading a flag on it: a
// per-response getter closure would give each response its own hidden class, and every access
// node's http internals make to it would go megamorphic.
const kHeadersSent = Symbol('oncely.headersSent');
type Captured = ServerResponse & { [kHeadersSent]?: boolean };
const nodeHeadersSent = Object.getOwnPropertyDescriptor(OutgoingMessage.prototype, 'headersSent')?.get;
function capturedHeadersSent(this: Captured): boolean {
  return this[kHeadersSent] === true || nodeHeadersSent?.call(this) === true;
}

/**
 * Capture what a handler writes to `res` — `writeHead`, `setHeader`, `write`, `end`, pipes — and
 * hand the complete response to `execution` before any byte reaches the client (R6). Bodies over
 * `maxResponseBytes` and event streams are recorded without their body, then streamed (R7).
 *
 * @returns `fail(error)`: call when the handler threw or rejected; it records and sends the 500
 * problem if nothing was sent yet (R3), or cuts off a response already streaming.
 */
export function captureResponse(res: ServerResponse, execution: Execution): { fail(error: unknown): void } {
  const original = { write: res.write, end: res.end, writeHead: res.writeHead, destroy: res.destroy };
  const chunks: Buffer[] = [];
  let size = 0;
  let mode: 'buffer' | 'switching' | 'stream' | 'ended' = 'buffer';
  const queued: Array<() => void> = [];

  const captured = res as Captured;
  // Shape changes happen here once, in the same order for every response (no defineProperty per
  // write, no delete): node's http internals keep seeing one hidden class.
  captured[kHeadersSent] = false;
  Object.defineProperty(res, 'headersSent', { configurable: true, get: capturedHeadersSent });

  const restore = () => {
    res.write = original.write;
    res.end = original.end;
    res.writeHead = original.writeHead;
    res.destroy = original.destroy;
    // Back to node's own answer.
    captured[kHeadersSent] = false;
  };

  // Once the handler has written its head or body, node would report the headers as sent; frameworks
  // read that to choose between writing an error response and aborting (Express's final handler,
  // Koa's ctx.onerror). Report the same while buffering, so an error after the first byte aborts the
  // response instead of being appended to it.
  let committed = false;
  const commit = () => {
    committed = true;
    captured[kHeadersSent] = true;
  };

  // R3: the app aborted the response (pipeline() does on a failing stream) before it completed:
  // record a 500 problem, so a retry never re-runs the handler (R6: before the connection is cut).
  res.destroy = function destroy(this: ServerResponse, error?: Error) {
    if (mode !== 'buffer') return original.destroy.call(res, error);
    mode = 'ended';
    // Nothing reached the wire, so as in node no headers count as sent; what the framework writes
    // until the problem is recorded is dropped with the connection.
    captured[kHeadersSent] = false;
    execution.fail(error).then(() => {
      restore();
      original.destroy.call(res, error);
    });
    return res;
  } as typeof res.destroy;
  res.once('close', () => {
    // R3: the connection closed after the handler began writing (a framework aborting an error
    // after "headers sent", or the client leaving): the response cannot complete.
    if (mode !== 'buffer' || !committed) return;
    mode = 'ended';
    restore();
    void execution.fail(new Error('the connection closed before the response completed'));
  });

  const toBuffer = (chunk: unknown, encoding: unknown): Buffer | undefined => {
    if (chunk === undefined || chunk === null) return undefined;
    if (typeof chunk === 'string')
      return Buffer.from(chunk, (typeof encoding === 'string' ? encoding : 'utf8') as BufferEncoding);
    if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    throw new TypeError('The "chunk" argument must be of type string or an instance of Buffer or Uint8Array');
  };
  const callbackOf = (encoding: unknown, callback: unknown): WriteCallback | undefined =>
    typeof encoding === 'function'
      ? (encoding as WriteCallback)
      : typeof callback === 'function'
        ? (callback as WriteCallback)
        : undefined;

  // R7: too large or an event stream: record the head, then stream what was buffered and what follows.
  const switchToStream = () => {
    mode = 'switching';
    execution.completeWithoutBody(res.statusCode, headerMap(res.getHeaders())).then(() => {
      restore();
      mode = 'stream';
      for (const chunk of chunks) (original.write as Write).call(res, chunk);
      chunks.length = 0;
      for (const operation of queued.splice(0)) operation();
    });
  };

  res.writeHead = function writeHead(this: ServerResponse, status: unknown, ...rest: unknown[]) {
    commit();
    res.statusCode = status as number;
    let headers = rest[0];
    if (typeof headers === 'string') {
      res.statusMessage = headers;
      headers = rest[1];
    }
    if (Array.isArray(headers)) {
      // Raw form: [name, value, name, value, …] or [[name, value], …].
      if (Array.isArray(headers[0]))
        for (const [name, value] of headers as [string, string][]) res.appendHeader(name, value);
      else
        for (let i = 0; i + 1 < headers.length; i += 2)
          res.appendHeader(headers[i] as string, headers[i + 1] as string);
    } else if (headers && typeof headers === 'object') {
      for (const [name, value] of Object.entries(headers))
        if (value !== undefined) res.setHeader(name, value as string);
    }
    return res;
  } as WriteHead as typeof res.writeHead;

  res.write = function write(this: ServerResponse, chunk: unknown, encoding?: unknown, callback?: unknown) {
    if (mode === 'stream') return (original.write as Write).call(res, chunk, encoding, callback);
    if (mode === 'ended') return false;
    commit();
    const done = callbackOf(encoding, callback);
    if (mode === 'switching') {
      queued.push(() => (original.write as Write).call(res, chunk, encoding, callback));
      return true;
    }
    const buffer = toBuffer(chunk, encoding);
    if (buffer !== undefined && buffer.byteLength > 0) {
      chunks.push(buffer);
      size += buffer.byteLength;
    }
    if (done) process.nextTick(done);
    if (size > execution.maxResponseBytes || execution.streams(headerMap(res.getHeaders()))) switchToStream();
    return true;
  } as Write as typeof res.write;

  res.end = function end(this: ServerResponse, chunk?: unknown, encoding?: unknown, callback?: unknown) {
    if (typeof chunk === 'function') {
      callback = chunk;
      chunk = undefined;
    }
    if (mode === 'stream') return (original.end as End).call(res, chunk, encoding, callback);
    if (mode === 'switching') {
      queued.push(() => (original.end as End).call(res, chunk, encoding, callback));
      return res;
    }
    if (mode === 'ended') return res;
    commit();
    const buffer = toBuffer(chunk, encoding);
    if (buffer !== undefined && buffer.byteLength > 0) {
      chunks.push(buffer);
      size += buffer.byteLength;
    }
    const done = callbackOf(encoding, callback);
    const headers = headerMap(res.getHeaders());
    if (size > execution.maxResponseBytes || execution.streams(headers)) {
      switchToStream();
      queued.push(() => (original.end as End).call(res, undefined, undefined, done));
      return res;
    }
    mode = 'ended';
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
    const response: OutgoingResponse = { status: res.statusCode, headers, body };
    // R6: recorded before the first byte is released.
    execution.complete(response).then(() => {
      restore();
      if (!res.hasHeader('transfer-encoding')) res.setHeader('content-length', body.byteLength);
      const [chunk, encoding] = endArguments(body);
      (original.end as End).call(res, chunk, encoding, done);
    });
    return res;
  } as End as typeof res.end;

  return {
    fail(error: unknown) {
      if (mode === 'buffer') {
        mode = 'ended';
        restore();
        execution.fail(error).then((problem) => {
          if (res.headersSent) res.destroy();
          else writeFresh(res, problem);
        });
      } else if (mode === 'stream' || mode === 'switching') {
        // The head is recorded and bytes may be on the wire: cut the response off.
        res.destroy(error instanceof Error ? error : undefined);
      }
    },
  };
}

/** Replace whatever headers the handler set with `response`'s, then send it. */
function writeFresh(res: ServerResponse, response: OutgoingResponse): void {
  for (const name of res.getHeaderNames()) res.removeHeader(name);
  writeResponse(res, response);
}
