/**
 * @module Reading request bodies under a size limit (SPEC R7), shared by the adapters.
 */
import { RequestTooLargeError } from './errors.js';

const EMPTY = new Uint8Array(0);

/**
 * Read a body stream to its end, rejecting with {@link RequestTooLargeError} as soon as more than
 * `limit` bytes arrive. `declaredLength` (a Content-Length) lets an oversized body fail unread.
 */
export async function readLimited(
  stream: AsyncIterable<Uint8Array | string> | null | undefined,
  limit: number,
  declaredLength?: string | null,
): Promise<Uint8Array> {
  if (declaredLength != null && Number(declaredLength) > limit) throw new RequestTooLargeError(limit);
  if (stream == null) return EMPTY;
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += bytes.byteLength;
    if (size > limit) throw new RequestTooLargeError(limit);
    chunks.push(bytes);
  }
  if (chunks.length === 0) return EMPTY;
  if (chunks.length === 1) return chunks[0]!;
  return Buffer.concat(chunks, size);
}

/** What {@link readStreamLimited} does at the edges. */
export interface ReadStreamOptions {
  /** A Content-Length, so an oversized body fails unread. */
  declaredLength?: string | null;
  /** Past the limit: `'pause'` stops reading, `'drain'` lets the rest flow away unread (the connection stays usable). */
  onOverflow: 'pause' | 'drain';
  /**
   * Called with the body in a microtask after `'end'`, before the promise settles: the moment node
   * has finished with an ended message (used to re-arm it, see `rearmBody`).
   */
  afterEnd?: (body: Uint8Array) => void;
}

/** The minimal Node readable the reader needs (an `IncomingMessage`, a Fastify payload). */
interface NodeReadable {
  on(event: string, listener: (...args: never[]) => void): unknown;
  removeListener(event: string, listener: (...args: never[]) => void): unknown;
  pause(): unknown;
  resume(): unknown;
}

/**
 * Read a Node stream to its end under `limit` bytes (R7) with plain `'data'`/`'end'` listeners:
 * cheaper per request than an async iterator (no promise per chunk, no end-of-stream watcher), and
 * unlike `for await`, it leaves the stream undestroyed with no listener behind.
 */
export function readStreamLimited(
  stream: NodeReadable,
  limit: number,
  options: ReadStreamOptions,
): Promise<Uint8Array> {
  const declared = options.declaredLength;
  if (declared != null && Number(declared) > limit) return Promise.reject(new RequestTooLargeError(limit));
  return new Promise<Uint8Array>((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    let size = 0;
    const cleanup = () => {
      stream.removeListener('data', onData);
      stream.removeListener('end', onEnd);
      stream.removeListener('error', onError);
      stream.removeListener('close', onClose);
    };
    const onData = (chunk: Uint8Array | string) => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      size += bytes.byteLength;
      if (size > limit) {
        cleanup();
        if (options.onOverflow === 'drain') stream.resume();
        else stream.pause();
        reject(new RequestTooLargeError(limit));
        return;
      }
      chunks.push(bytes);
    };
    const onEnd = () => {
      cleanup();
      const body =
        chunks.length === 0 ? EMPTY : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      const afterEnd = options.afterEnd;
      if (afterEnd === undefined) {
        resolve(body);
        return;
      }
      queueMicrotask(() => {
        afterEnd(body);
        resolve(body);
      });
    };
    const onError = (error: Error) => {
      cleanup();
      reject(error);
    };
    const onClose = () => {
      // 'close' before 'end': the client went away mid-body.
      cleanup();
      reject(Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    };
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
    stream.on('close', onClose);
  });
}

/** The minimal Node readable {@link peekBuffered} needs (an `IncomingMessage`, a Fastify payload). */
interface BufferedReadable {
  readonly readableLength: number;
  readonly readableFlowing: boolean | null;
  readonly readableEncoding: BufferEncoding | null;
  readonly readableObjectMode: boolean;
  read(): unknown;
  unshift(chunk: Uint8Array): void;
}

/**
 * What node keeps inside a readable, as far as {@link peekBuffered} looks: the buffered chunks are a
 * linked list in Node 20 and an array read from `bufferIndex` on in Node 22 and later.
 */
interface ReadableInternals {
  length: number;
  flowing: boolean | null;
  objectMode: boolean;
  encoding: string | null;
  buffer: { length: number; head?: { data: unknown } | null } | unknown[];
  bufferIndex?: number;
}

/**
 * The whole body, when all `declaredLength` bytes of it sit in the stream's buffer unread — the
 * usual case for a small request, whose body arrives in the packet that carried its head. The
 * stream is left as it was, still holding the whole body for the app's parser: no copy, no events,
 * no listeners, no read. Otherwise (no Content-Length, bytes still to come, a stream someone else
 * reads or decodes) undefined.
 */
export function peekBuffered(
  stream: BufferedReadable,
  declaredLength: string | null | undefined,
): Uint8Array | undefined {
  if (declaredLength == null) return undefined;
  const length = Number(declaredLength);
  if (!(length > 0)) return undefined;
  // One property read of the request (whose shape frameworks vary per request, so each read of it
  // costs a look-up) instead of one per getter, and a look at the buffer that changes nothing.
  const state = (stream as { _readableState?: ReadableInternals })._readableState;
  if (state !== undefined && typeof state.length === 'number') {
    if (!untouched(state.length, state.flowing, state.encoding, state.objectMode, length)) return undefined;
    const chunk = onlyChunk(state);
    if (chunk instanceof Uint8Array) return chunk.byteLength === length ? chunk : undefined;
  } else if (
    !untouched(
      stream.readableLength,
      stream.readableFlowing,
      stream.readableEncoding,
      stream.readableObjectMode,
      length,
    )
  ) {
    return undefined;
  }
  // Several chunks, or a stream whose insides look unfamiliar: take them as one buffer and put it
  // back. Never flowed, read() hands over everything buffered and emits nothing.
  const body = stream.read() as Buffer | null;
  if (body === null) return undefined;
  stream.unshift(body);
  return body.byteLength === length ? body : undefined;
}

/**
 * All `length` bytes are buffered (the HTTP parser never delivers more than Content-Length) and
 * nobody reads the stream yet: once anyone listens ('data', 'readable'), pauses it or decodes it,
 * its bytes are theirs.
 */
function untouched(
  buffered: number,
  flowing: boolean | null,
  encoding: string | null | undefined,
  objectMode: boolean,
  length: number,
): boolean {
  return buffered === length && flowing === null && (encoding ?? null) === null && !objectMode;
}

/** The one chunk buffered in a readable's internals, if there is exactly one. */
export function onlyChunk(state: Pick<ReadableInternals, 'buffer' | 'bufferIndex'>): unknown {
  const buffer = state.buffer;
  if (Array.isArray(buffer)) {
    const index = state.bufferIndex ?? 0;
    return buffer.length - index === 1 ? buffer[index] : undefined;
  }
  return buffer.length === 1 ? buffer.head?.data : undefined;
}

/**
 * {@link peekBuffered} one microtask from now. node emits a request on its head and only then
 * parses the rest of the packet, where a small body usually is: by the next microtask it often sits
 * in the buffer whole. (The peek must run inside the callback: `Promise.resolve(peekBuffered(…))`
 * would peek at once.)
 */
export function peekNext(
  stream: BufferedReadable,
  declaredLength: string | null | undefined,
): Promise<Uint8Array | undefined> {
  return Promise.resolve().then(() => peekBuffered(stream, declaredLength));
}
