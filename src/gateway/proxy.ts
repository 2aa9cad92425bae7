/**
 * @module The gateway's proxy: an adapter whose "handler" is an upstream HTTP call (undici).
 * Keyed requests go through the engine (G1, G2); everything else is streamed untouched (G3).
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { TLSSocket } from 'node:tls';
import { Pool } from 'undici';
import { NodeRequest, writeResponse } from '../adapters/_node-http.js';
import { Engine, type Execution, PASS, problemResponse } from '../core/engine.js';
import {
  type IdempotencyError,
  UpstreamFailedError,
  UpstreamTimeoutError,
  UpstreamUnreachableError,
} from '../core/errors.js';
import type { EngineEvent, EngineEventType } from '../core/events.js';
import type { HeaderMap } from '../core/store.js';

// Hop-by-hop fields (RFC 9110 §7.6.1) are for one connection only: never forwarded either way.
// `expect` and `host` are answered/set by the gateway's own connections.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

// G2: errors raised while connecting, before one byte of the request left the gateway.
const NOT_SENT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'UND_ERR_CONNECT_TIMEOUT',
]);
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/** What the proxy learned about one request, read by the event listener for logs and metrics. */
export interface RequestNotes {
  upstreamMs?: number;
  /** For a G2 release, which carries no status in its engine event. */
  status?: number;
  code?: string;
}

// Notes by request, and the notes of the event being reported. No AsyncLocalStorage: enabling it
// installs async hooks that tax every promise in the process, unkeyed traffic included (G3).
const notesByRequest = new WeakMap<IncomingMessage, RequestNotes>();
let reporting: RequestNotes | undefined;

/** The notes of the request whose engine event is being reported, if any. */
export function currentNotes(): RequestNotes | undefined {
  return reporting;
}

/**
 * The gateway's engine: an {@link Engine} that makes the proxy's notes on a request (upstream
 * latency, G2 status) visible to its `onEvent` listener through {@link currentNotes}. Events are
 * reported synchronously, so the notes are set exactly for the duration of one listener call.
 *
 * @example
 * const engine = new GatewayEngine({ store, onEvent: (event) => log(event, currentNotes()) });
 */
export class GatewayEngine extends Engine<IncomingMessage> {
  /** @internal */
  override emit(
    type: EngineEventType,
    request: { method: string; url: string },
    started: number,
    storeMs: number,
    extra: Partial<EngineEvent>,
  ): void {
    // Both the engine's request and the adapter's carry the IncomingMessage as `raw`.
    const raw = (request as { raw?: unknown }).raw;
    reporting = raw === undefined ? undefined : notesByRequest.get(raw as IncomingMessage);
    try {
      super.emit(type, request, started, storeMs, extra);
    } finally {
      reporting = undefined;
    }
  }
}

/** Options of {@link createProxy}. */
export interface ProxyOptions {
  engine: Engine<IncomingMessage>;
  /** The upstream origin, `http://host:port`. */
  upstream: string;
  /** G2: the longest wait for response headers once the request is sent, and between body chunks. */
  upstreamTimeoutMs: number;
  /** Called with each upstream call's latency, whether or not it succeeded. */
  onUpstream?: (ms: number, outcome: 'ok' | 'unreachable' | 'failed' | 'timeout') => void;
  /** Called for every request the engine let through untouched. */
  onPass?: () => void;
}

/** A request listener for node:http plus the upstream connection pool it owns. */
export interface Proxy {
  handle(req: IncomingMessage, res: ServerResponse): Promise<void>;
  close(): Promise<void>;
}

/**
 * Create the proxy listener. Keyed requests are buffered, decided by the engine, sent upstream, and
 * their response recorded before it is released (R6); other traffic is streamed both ways (G3).
 *
 * @param options see {@link ProxyOptions}
 * @example
 * const proxy = createProxy({ engine, upstream: 'http://127.0.0.1:8080', upstreamTimeoutMs: 30_000 });
 * createServer((req, res) => proxy.handle(req, res)).listen(8787);
 */
export function createProxy(options: ProxyOptions): Proxy {
  const { engine, upstreamTimeoutMs } = options;
  const pool = new Pool(options.upstream, {
    connectTimeout: Math.min(upstreamTimeoutMs, 10_000),
    headersTimeout: upstreamTimeoutMs,
    bodyTimeout: upstreamTimeoutMs,
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const incoming = new BufferingRequest(req);
      const decision = await engine.begin(incoming);
      if (decision === PASS || decision.action === 'pass') {
        options.onPass?.();
        // A keyed request let through unprotected (fail-open, S2) was read already: send those bytes.
        await passThrough(req, res, incoming.body);
      } else if (decision.action === 'respond') {
        writeResponse(res, decision.response);
      } else {
        const { execution } = decision;
        const requestNotes: RequestNotes = {};
        notesByRequest.set(req, requestNotes);
        try {
          await execute(req, res, execution, requestNotes);
        } catch (error) {
          // A fault after the lock was won must still settle it (R3), or the lease would live on.
          const problem = await execution.fail(error);
          if (!res.headersSent) writeResponse(res, problem);
          else res.destroy();
        }
      }
    } catch {
      // Only a fault in the gateway itself lands here; the client must still get an answer.
      if (!res.headersSent) writeResponse(res, problemResponse(new UpstreamFailedError()));
      else res.destroy();
    }
    // Already finished on the common paths; waiting on it anyway costs listeners and a tick.
    if (!res.writableFinished) await finished(res).catch(() => {});
  }

  /** G3: unkeyed traffic and other methods, streamed both ways without buffering. */
  async function passThrough(req: IncomingMessage, res: ServerResponse, read?: Uint8Array): Promise<void> {
    const started = performance.now();
    const length = req.headers['content-length'];
    const hasBody =
      length !== undefined ? Number(length) > 0 : req.headers['transfer-encoding'] !== undefined;
    const headers = forwardHeaders(req);
    if (read !== undefined) {
      delete headers['transfer-encoding'];
      headers['content-length'] = String(read.byteLength);
    }
    let upstream: Awaited<ReturnType<Pool['request']>>;
    try {
      upstream = await pool.request({
        method: req.method as 'GET',
        path: req.url ?? '/',
        headers,
        body: read ?? (hasBody ? (arrived(req, length) ?? req) : null),
      });
    } catch (error) {
      const problem = classify(error, upstreamTimeoutMs);
      options.onUpstream?.(performance.now() - started, outcomeOf(problem));
      if (!res.headersSent) writeResponse(res, problemResponse(problem));
      return;
    }
    options.onUpstream?.(performance.now() - started, 'ok');
    res.writeHead(upstream.statusCode, responseHeaders(upstream.headers));
    await relay(upstream.body, res);
  }

  /** The request won the lock: call the upstream, record what it answered, then release it (R6). */
  async function execute(
    req: IncomingMessage,
    res: ServerResponse,
    execution: Execution,
    requestNotes: RequestNotes,
  ): Promise<void> {
    const body = execution.request.body;
    const headers = forwardHeaders(req);
    delete headers['transfer-encoding'];
    headers['content-length'] = String(body.byteLength);
    const started = performance.now();
    let upstream: Awaited<ReturnType<Pool['request']>>;
    try {
      upstream = await pool.request({ method: req.method as 'POST', path: req.url ?? '/', headers, body });
    } catch (error) {
      const problem = classify(error, upstreamTimeoutMs);
      requestNotes.upstreamMs = performance.now() - started;
      options.onUpstream?.(requestNotes.upstreamMs, outcomeOf(problem));
      if (problem instanceof UpstreamUnreachableError) {
        // G2: nothing was sent, the upstream cannot have acted: free the key so a retry can succeed.
        requestNotes.status = problem.status;
        requestNotes.code = problem.code;
        await execution.release();
        writeResponse(res, problemResponse(problem));
      } else {
        // G2: the upstream got the request and may have acted: this outcome is recorded.
        writeResponse(res, await execution.complete(problemResponse(problem)));
      }
      return;
    }

    const status = upstream.statusCode;
    const head = responseHeaders(upstream.headers);
    const recorded = headerMap(head);
    // An explicit iterator, so stopping at the limit does not destroy the rest of the body (R7).
    const iterator = (upstream.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const chunks: Buffer[] = [];
    let size = 0;
    let ended = execution.streams(recorded);
    try {
      while (!ended && size <= execution.maxResponseBytes) {
        const next = await iterator.next();
        if (next.done) break;
        chunks.push(next.value);
        size += next.value.byteLength;
      }
    } catch (error) {
      // The upstream answered, then its body broke off: it acted, so an outcome is recorded. A stall
      // is G2's recorded 504; a broken stream is R3's 500, exactly as behind the middleware (G1).
      const problem = classify(error, upstreamTimeoutMs, true);
      requestNotes.upstreamMs = performance.now() - started;
      options.onUpstream?.(requestNotes.upstreamMs, outcomeOf(problem));
      if (problem instanceof UpstreamTimeoutError) {
        writeResponse(res, await execution.complete(problemResponse(problem)));
      } else writeResponse(res, await execution.fail(error));
      return;
    }
    ended = size > execution.maxResponseBytes || ended;

    if (!ended) {
      requestNotes.upstreamMs = performance.now() - started;
      options.onUpstream?.(requestNotes.upstreamMs, 'ok');
      const response = await execution.complete({ status, headers: recorded, body: concat(chunks, size) });
      const sent: OutgoingHttpHeaders = Object.assign({}, head);
      sent['content-length'] = response.body.byteLength;
      res.writeHead(response.status, sent);
      res.end(response.body);
      return;
    }

    // R7: too large to keep, or an event stream: record the head, then deliver the body in full.
    await execution.completeWithoutBody(status, recorded);
    res.writeHead(status, head);
    try {
      await pipeline(async function* rest() {
        yield* chunks;
        for (;;) {
          const next = await iterator.next();
          if (next.done) return;
          yield next.value;
        }
      }, res);
    } catch {
      res.destroy();
    } finally {
      requestNotes.upstreamMs = performance.now() - started;
      options.onUpstream?.(requestNotes.upstreamMs, 'ok');
    }
  }

  return {
    handle,
    close: () => pool.close(),
  };
}

/**
 * G3: the request body, when all of it has arrived already (the usual case for small bodies): one
 * buffer for undici to write instead of a stream to pump. Nothing waits for bytes, so nothing is
 * buffered that was not already in memory; otherwise undefined, and the body is streamed.
 */
function arrived(req: IncomingMessage, length: string | undefined): Buffer | undefined {
  if (length === undefined || req.readableDidRead) return undefined;
  // Content-Length bytes buffered are the whole body (the parser delivers no more than that), even
  // before the parser has marked the message complete.
  if (req.readableLength !== Number(length)) return undefined;
  // Paused and untouched: read() hands over everything buffered, and the stream ends after it.
  return (req.read() as Buffer | null) ?? undefined;
}

/**
 * G3: stream the upstream's body to the client with backpressure. What `pipeline` does here, without
 * its per-call AbortController (whose abort builds a DOMException with a stack trace per response).
 * Never rejects: if either side breaks, both are torn down.
 */
function relay(body: Readable, res: ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    const broke = () => {
      // The stream broke after the head went out: all we can do is cut the response off.
      res.destroy();
      resolve();
    };
    // Kept after the end: destroying the body below makes undici emit an abort error.
    body.on('error', broke);
    if (res.destroyed) {
      // The client is gone already: its 'close' has been emitted, do not wait for it.
      body.destroy();
      resolve();
      return;
    }
    res.once('close', () => {
      // The client went away before the end: stop reading from the upstream.
      if (!res.writableFinished) body.destroy();
      resolve();
    });
    body.pipe(res);
  });
}

/** The engine's view of the request, remembering the body once the engine has read it. */
class BufferingRequest extends NodeRequest<IncomingMessage> {
  body: Uint8Array | undefined;

  constructor(req: IncomingMessage) {
    super(req, req);
  }

  override async readBody(limit: number): Promise<Uint8Array> {
    this.body = await super.readBody(limit);
    return this.body;
  }
}

/** G2: which problem an upstream error means, and whether the request may have reached it. */
function classify(error: unknown, timeoutMs: number, sent = false): IdempotencyError {
  const code = errorCode(error);
  if (!sent && code !== undefined && NOT_SENT_CODES.has(code)) return new UpstreamUnreachableError(error);
  if (code !== undefined && TIMEOUT_CODES.has(code)) return new UpstreamTimeoutError(timeoutMs, error);
  return new UpstreamFailedError(error);
}

function outcomeOf(problem: IdempotencyError): 'unreachable' | 'failed' | 'timeout' {
  return problem instanceof UpstreamUnreachableError
    ? 'unreachable'
    : problem instanceof UpstreamTimeoutError
      ? 'timeout'
      : 'failed';
}

function errorCode(error: unknown): string | undefined {
  const value = error as { code?: unknown; errors?: Array<{ code?: unknown }>; cause?: { code?: unknown } };
  const code = value?.code ?? value?.errors?.[0]?.code ?? value?.cause?.code;
  return typeof code === 'string' ? code : undefined;
}

const NO_TOKENS: ReadonlySet<string> = new Set();
const KEEP_ALIVE: ReadonlySet<string> = new Set(['keep-alive']);
const CLOSE: ReadonlySet<string> = new Set(['close']);

/** Fields named in `Connection` are hop-by-hop too. */
function connectionTokens(value: string | string[] | undefined): ReadonlySet<string> {
  // The usual values, without splitting and allocating per request.
  if (value === undefined) return NO_TOKENS;
  if (value === 'keep-alive') return KEEP_ALIVE;
  if (value === 'close') return CLOSE;
  const text = Array.isArray(value) ? value.join(',') : value;
  return new Set(
    text
      .toLowerCase()
      .split(',')
      .map((token) => token.trim())
      .filter(Boolean),
  );
}

/** The request headers the upstream sees: end-to-end fields plus X-Forwarded-For/-Proto/-Host. */
export function forwardHeaders(req: IncomingMessage): Record<string, string | string[]> {
  const named = connectionTokens(req.headers.connection);
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name)) continue;
    if (name === 'host' || name === 'expect') continue;
    headers[name] = value;
  }
  // A load balancer in front may already have set these; append to the chain, keep its proto/host.
  const remote = req.socket.remoteAddress ?? '';
  const prior = req.headers['x-forwarded-for'];
  headers['x-forwarded-for'] = prior
    ? `${Array.isArray(prior) ? prior.join(', ') : prior}, ${remote}`
    : remote;
  headers['x-forwarded-proto'] ??= req.socket instanceof TLSSocket ? 'https' : 'http';
  if (req.headers.host !== undefined) headers['x-forwarded-host'] ??= req.headers.host;
  return headers;
}

/** The upstream's response headers minus hop-by-hop fields, for the client. */
function responseHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = connectionTokens(headers.connection);
  const kept: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name)) continue;
    kept[name] = value;
  }
  return kept;
}

function headerMap(headers: OutgoingHttpHeaders): HeaderMap {
  const map: HeaderMap = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    map[name] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return map;
}

function concat(chunks: Buffer[], size: number): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  return Buffer.concat(chunks, size);
}

/** The currently reported engine event, with the proxy's notes merged in, for one log line. */
export function describeEvent(event: EngineEvent): Record<string, unknown> {
  const extra = currentNotes();
  return {
    outcome: event.type,
    method: event.method,
    path: event.url,
    key: event.key,
    status: event.status ?? extra?.status,
    code: event.code ?? extra?.code,
    durationMs: round(event.durationMs),
    storeMs: round(event.storeMs),
    upstreamMs: extra?.upstreamMs === undefined ? undefined : round(extra.upstreamMs),
  };
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
