/**
 * @module Shared by the adapters built on node:http (node, Express, Koa, NestJS): reading the body
 * so the app can read it again, capturing every way a response leaves, writing engine responses.
 */
import { type IncomingMessage, type OutgoingHttpHeaders, OutgoingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { peekBuffered, peekNext, readLimited, readStreamLimited } from '../core/body.js';
import type { Execution, IncomingRequest, OutgoingResponse } from '../core/engine.js';
import { RequestTooLargeError } from '../core/errors.js';
import type { Awaitable, HeaderMap } from '../core/store.js';

/**
 * The engine's view of a node:http request; the body is read only when asked.
 * `parsedBody`, when given, returns what a body parser mounted earlier made of a body it already
 * consumed (Express's `req.body`, Koa's `ctx.request.body`): see {@link parsedBodyBytes}.
 */
export class NodeRequest<Raw = IncomingMessage> implements IncomingRequest<Raw> {
  readonly method: string;
  readonly url: string;
  // Read once: Express gives every request a shape of its own, so each property read of `req`
  // is a slow look-up, and node builds `headers` in a getter.
  readonly #headers: IncomingMessage['headers'];

  constructor(
    readonly req: IncomingMessage,
    readonly raw: Raw,
    url?: string,
    readonly parsedBody?: () => unknown,
  ) {
    this.method = req.method ?? 'GET';
    this.url = url ?? req.url ?? '/';
    this.#headers = req.headers;
  }

  header(name: string): string | undefined {
    const value = this.#headers[name];
    return Array.isArray(value) ? value.join(', ') : value;
  }

  readBody(limit: number): Awaitable<Uint8Array> {
    const req = this.req;
    const declared = this.#headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) throw new RequestTooLargeError(limit);
    const buffered = peekBuffered(req, declared);
    if (buffered !== undefined) return buffered;
    if (this.parsedBody !== undefined && (req.readableDidRead || req.readableEnded)) {
      // Something read the stream before us: its bytes are gone, fingerprint what was made of them.
      const body = parsedBodyBytes(this.parsedBody());
      if (body.byteLength > limit) throw new RequestTooLargeError(limit);
      return body;
    }
    if (req.readableEnded || req.destroyed) return readByIterator(req, limit);
    return peekNext(req, declared).then((body) => body ?? readByListeners(req, limit));
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
  // Not `{ ...headers, 'content-length': n }`: V8 builds that on a slow path (see replayResponse).
  const headers: OutgoingHttpHeaders = Object.assign({}, response.headers);
  headers['content-length'] = response.body.byteLength;
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
    // Assigned, "__proto__" would set the map's prototype (an array's items then read as headers).
    if (value === undefined || name === '__proto__') continue;
    map[name] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return map;
}

type WriteCallback = (error?: Error | null) => void;
type Write = (this: ServerResponse, chunk: unknown, encoding?: unknown, callback?: unknown) => boolean;
type End = (this: ServerResponse, chunk?: unknown, encoding?: unknown, callback?: unknown) => ServerResponse;
type WriteHead = (
  this: ServerResponse,
  status: number,
  reason?: unknown,
  headers?: unknown,
) => ServerResponse;
type Destroy = (this: ServerResponse, error?: Error) => ServerResponse;

/** What `captureResponse` hands back to its adapter. */
export interface CapturedResponse {
  /**
   * Call when the handler threw or rejected: records and sends the 500 problem if nothing was sent
   * yet (R3), or cuts off a response already streaming.
   */
  fail(error: unknown): void;
}

// The capture of each response being buffered. Kept beside the response, never on it: a property
// added to a response whose prototype was swapped (Express swaps it on every request) gives that one
// object a hidden class of its own, which costs microseconds per added property and turns every
// later property access to it, in node and in the framework, megamorphic.
const captures = new WeakMap<ServerResponse, Capture>();

// node's own methods, and the ones that route a call to the response's capture if it has one.
// Installed once on ServerResponse.prototype (see installCapture); uncaptured responses pay one
// WeakMap look-up per call.
let node: { write: Write; end: End; writeHead: WriteHead; destroy: Destroy; headersSent: () => boolean };
let routed: { write: Write; end: End; writeHead: WriteHead; destroy: Destroy };

/**
 * Route `write`, `end`, `writeHead`, `destroy` and `headersSent` of every node:http response through
 * its capture, if it has one. Patching the shared prototype, rather than each response, keeps
 * responses in their usual shape and survives frameworks swapping a response's prototype mid-request
 * (Express does when entering a mounted sub-app). Wrappers a framework puts on the instance
 * (compression, say) run before the capture, so what is recorded is what would reach the socket.
 */
function installCapture(): void {
  if (routed !== undefined) return;
  const proto = ServerResponse.prototype as ServerResponse & Record<string, unknown>;
  const headersSent = Object.getOwnPropertyDescriptor(OutgoingMessage.prototype, 'headersSent');
  node = {
    write: proto.write as Write,
    end: proto.end as End,
    writeHead: proto.writeHead as WriteHead,
    destroy: proto.destroy as Destroy,
    headersSent: headersSent?.get as () => boolean,
  };
  routed = {
    write(chunk, encoding, callback) {
      const capture = captures.get(this);
      return capture === undefined
        ? node.write.call(this, chunk, encoding, callback)
        : capture.write(chunk, encoding, callback);
    },
    end(chunk, encoding, callback) {
      const capture = captures.get(this);
      return capture === undefined
        ? node.end.call(this, chunk, encoding, callback)
        : capture.end(chunk, encoding, callback);
    },
    writeHead(status, reason, headers) {
      const capture = captures.get(this);
      return capture === undefined
        ? node.writeHead.call(this, status, reason, headers)
        : capture.writeHead(status, reason, headers);
    },
    destroy(error) {
      const capture = captures.get(this);
      return capture === undefined ? node.destroy.call(this, error) : capture.destroy(error);
    },
  };
  Object.assign(proto, routed);
  // Once the handler has written its head or body, node would report the headers as sent; frameworks
  // read that to choose between writing an error response and aborting (Express's final handler,
  // Koa's ctx.onerror). Report the same while buffering, so an error after the first byte aborts the
  // response instead of being appended to it.
  Object.defineProperty(proto, 'headersSent', {
    configurable: true,
    enumerable: headersSent?.enumerable ?? true,
    get(this: ServerResponse): boolean {
      return captures.get(this)?.committed === true || node.headersSent.call(this);
    },
  });
}

/**
 * Capture what a handler writes to `res` — `writeHead`, `setHeader`, `write`, `end`, pipes — and
 * hand the complete response to `execution` before any byte reaches the client (R6). Bodies over
 * `maxResponseBytes` and event streams are recorded without their body, then streamed (R7).
 */
export function captureResponse(res: ServerResponse, execution: Execution): CapturedResponse {
  installCapture();
  const capture = new Capture(res, execution, captures.get(res));
  captures.set(res, capture);
  return capture;
}

/** One response being captured; see {@link captureResponse}. */
class Capture implements CapturedResponse {
  readonly #chunks: Buffer[] = [];
  #size = 0;
  #mode: 'buffer' | 'switching' | 'stream' | 'ended' = 'buffer';
  // Calls made while the head is being recorded (R7), replayed once it is.
  readonly #queued: Array<() => void> = [];
  /** The handler wrote its head or body: `res.headersSent` reads true while buffered. */
  committed = false;
  #watching = false;

  /** @param outer a capture of the same response by an oncely mounted further out; it gets what this one releases. */
  constructor(
    readonly res: ServerResponse,
    readonly execution: Execution,
    readonly outer: Capture | undefined,
  ) {}

  /**
   * The handler began a response it has not ended: from here on a closing connection means it will
   * not complete (see closed()). A response sent with one `end()`, as `res.send` does, never needs
   * the listener.
   */
  #commit(): void {
    this.committed = true;
    if (this.#watching) return;
    this.#watching = true;
    this.res.once('close', () => this.closed());
  }

  /** Stop capturing: from here on, calls reach the outer capture or node. */
  #release(): void {
    this.committed = false;
    if (captures.get(this.res) !== this) return;
    if (this.outer === undefined) captures.delete(this.res);
    else captures.set(this.res, this.outer);
  }

  /**
   * R3: the connection closed after the handler began writing (a framework aborting an error after
   * "headers sent", or the client leaving): the response cannot complete.
   */
  closed(): void {
    if (this.#mode !== 'buffer' || !this.committed) return;
    this.#mode = 'ended';
    this.#release();
    void this.execution.fail(new Error('the connection closed before the response completed'));
  }

  /**
   * R3: the app aborted the response (pipeline() does on a failing stream) before it completed:
   * record a 500 problem, so a retry never re-runs the handler (R6: before the connection is cut).
   */
  destroy(error?: Error): ServerResponse {
    const res = this.res;
    if (this.#mode !== 'buffer') {
      this.#release();
      return routed.destroy.call(res, error);
    }
    this.#mode = 'ended';
    // Nothing reached the wire, so as in node no headers count as sent; what the framework writes
    // until the problem is recorded is dropped with the connection.
    this.committed = false;
    this.execution.fail(error).then(() => {
      this.#release();
      routed.destroy.call(res, error);
    });
    return res;
  }

  writeHead(status: number, reason?: unknown, headers?: unknown): ServerResponse {
    const res = this.res;
    if (this.#mode === 'stream') return routed.writeHead.call(res, status, reason, headers);
    this.#commit();
    res.statusCode = status;
    if (typeof reason === 'string') res.statusMessage = reason;
    else headers ??= reason;
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
  }

  write(chunk: unknown, encoding?: unknown, callback?: unknown): boolean {
    const res = this.res;
    const mode = this.#mode;
    if (mode === 'stream') return routed.write.call(res, chunk, encoding, callback);
    if (mode === 'ended') return false;
    this.#commit();
    if (mode === 'switching') {
      this.#queued.push(() => routed.write.call(res, chunk, encoding, callback));
      return true;
    }
    this.#append(chunk, encoding);
    const done = callbackOf(encoding, callback);
    if (done) process.nextTick(done);
    if (this.#size > this.execution.maxResponseBytes || this.execution.streams(headerMap(res.getHeaders())))
      this.#switchToStream();
    return true;
  }

  end(chunk?: unknown, encoding?: unknown, callback?: unknown): ServerResponse {
    const res = this.res;
    if (typeof chunk === 'function') {
      callback = chunk;
      chunk = undefined;
    }
    const mode = this.#mode;
    if (mode === 'stream') return routed.end.call(res, chunk, encoding, callback);
    if (mode === 'switching') {
      this.#queued.push(() => routed.end.call(res, chunk, encoding, callback));
      return res;
    }
    if (mode === 'ended') return res;
    this.committed = true;
    this.#append(chunk, encoding);
    const done = callbackOf(encoding, callback);
    const headers = headerMap(res.getHeaders());
    if (this.#size > this.execution.maxResponseBytes || this.execution.streams(headers)) {
      this.#switchToStream();
      this.#queued.push(() => routed.end.call(res, undefined, undefined, done));
      return res;
    }
    this.#mode = 'ended';
    const chunks = this.#chunks;
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, this.#size);
    // R6: recorded before the first byte is released.
    this.execution.complete({ status: res.statusCode, headers, body }).then(() => {
      this.#release();
      // Most frameworks have set it already (Express, Koa); setting it again costs two calls on `res`.
      if (headers['content-length'] !== String(body.byteLength) && headers['transfer-encoding'] === undefined)
        res.setHeader('content-length', body.byteLength);
      const [bytes, bytesEncoding] = endArguments(body);
      routed.end.call(res, bytes, bytesEncoding, done);
    });
    return res;
  }

  fail(error: unknown): void {
    const mode = this.#mode;
    if (mode === 'buffer') {
      this.#mode = 'ended';
      this.#release();
      const res = this.res;
      this.execution.fail(error).then((problem) => {
        if (res.headersSent) res.destroy();
        else writeFresh(res, problem);
      });
    } else if (mode === 'stream' || mode === 'switching') {
      // The head is recorded and bytes may be on the wire: cut the response off.
      this.res.destroy(error instanceof Error ? error : undefined);
    }
  }

  #append(chunk: unknown, encoding: unknown): void {
    if (chunk === undefined || chunk === null) return;
    let buffer: Buffer;
    if (typeof chunk === 'string')
      buffer = Buffer.from(chunk, (typeof encoding === 'string' ? encoding : 'utf8') as BufferEncoding);
    else if (chunk instanceof Uint8Array)
      buffer = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    else
      throw new TypeError(
        'The "chunk" argument must be of type string or an instance of Buffer or Uint8Array',
      );
    if (buffer.byteLength === 0) return;
    this.#chunks.push(buffer);
    this.#size += buffer.byteLength;
  }

  // R7: too large or an event stream: record the head, then stream what was buffered and what follows.
  #switchToStream(): void {
    this.#mode = 'switching';
    const res = this.res;
    this.execution.completeWithoutBody(res.statusCode, headerMap(res.getHeaders())).then(() => {
      this.#release();
      this.#mode = 'stream';
      for (const chunk of this.#chunks) routed.write.call(res, chunk);
      this.#chunks.length = 0;
      for (const operation of this.#queued.splice(0)) operation();
    });
  }
}

function callbackOf(encoding: unknown, callback: unknown): WriteCallback | undefined {
  if (typeof encoding === 'function') return encoding as WriteCallback;
  return typeof callback === 'function' ? (callback as WriteCallback) : undefined;
}

/** Replace whatever headers the handler set with `response`'s, then send it. */
function writeFresh(res: ServerResponse, response: OutgoingResponse): void {
  for (const name of res.getHeaderNames()) res.removeHeader(name);
  writeResponse(res, response);
}
