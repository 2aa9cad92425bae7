import { once } from 'node:events';
import { createServer, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { deferred } from '../../test/conformance/app.js';
import { NodeRequest } from '../adapters/_node-http.js';
import { onlyChunk, peekBuffered } from './body.js';

/** A paused stream with `chunks` already in its buffer, and whether it has ended. */
function buffered(chunks: string[], ended = true): Readable {
  const stream = new Readable({ read() {} });
  for (const chunk of chunks) stream.push(Buffer.from(chunk));
  if (ended) stream.push(null);
  return stream;
}

async function text(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

describe('peekBuffered', () => {
  it('F1: takes a whole buffered body and leaves the stream reading it from the start', async () => {
    const stream = buffered(['{"amount":', '1000}']);
    const body = peekBuffered(stream, '15');
    expect(Buffer.from(body!).toString()).toBe('{"amount":1000}');
    expect(await text(stream)).toBe('{"amount":1000}');
  });

  it('F1: also before the stream has ended (the HTTP parser marks the message complete later)', async () => {
    const stream = buffered(['abc'], false);
    expect(Buffer.from(peekBuffered(stream, '3')!).toString()).toBe('abc');
    stream.push(null);
    expect(await text(stream)).toBe('abc');
  });

  it('F1: looks at a body buffered as one chunk without reading the stream', async () => {
    const read = vi.fn();
    const stream = new Readable({ read });
    stream.push(Buffer.from('abc'));
    const body = peekBuffered(stream, '3');
    expect(Buffer.from(body!).toString()).toBe('abc');
    // read() would ask for more (and node's request would resume its socket for it).
    expect(read).not.toHaveBeenCalled();
    expect(stream.readableFlowing).toBeNull();
    stream.push(null);
    expect(await text(stream)).toBe('abc');
  });

  it('F1: finds the one buffered chunk in the shapes node keeps it in', () => {
    const [a, b] = [Buffer.from('a'), Buffer.from('b')];
    expect(onlyChunk({ buffer: [a], bufferIndex: 0 })).toBe(a);
    expect(onlyChunk({ buffer: [a, b], bufferIndex: 1 })).toBe(b);
    expect(onlyChunk({ buffer: [a, b], bufferIndex: 0 })).toBeUndefined();
    expect(onlyChunk({ buffer: { length: 1, head: { data: a } } })).toBe(a);
    expect(onlyChunk({ buffer: { length: 2, head: { data: a } } })).toBeUndefined();
  });

  it("F1: a readable without node's internals is peeked at through its public interface", () => {
    const chunks: Uint8Array[] = [Buffer.from('abc')];
    const stream = {
      readableLength: 3,
      readableFlowing: null,
      readableEncoding: null,
      readableObjectMode: false,
      read: () => chunks.shift() ?? null,
      unshift: (chunk: Uint8Array) => chunks.unshift(chunk),
    };
    expect(Buffer.from(peekBuffered(stream, '3')!).toString()).toBe('abc');
    expect(chunks).toHaveLength(1);
    expect(peekBuffered({ ...stream, readableFlowing: false }, '3')).toBeUndefined();
  });

  it('F1: leaves the stream alone when the body is not all there, undeclared, empty, read by others or decoding', async () => {
    const cases: Array<[Readable, string | undefined]> = [
      [buffered(['ab'], false), '3'],
      [buffered(['abc']), undefined],
      [buffered([]), '0'],
      [buffered(['abc']).setEncoding('utf8'), '3'],
    ];
    for (const [stream, declared] of cases) {
      const read = vi.spyOn(stream, 'read');
      expect(peekBuffered(stream, declared)).toBeUndefined();
      expect(read).not.toHaveBeenCalled();
    }
    const flowing = buffered(['abc']);
    flowing.on('data', () => {});
    expect(peekBuffered(flowing, '3')).toBeUndefined();
    // Paused with a listener attached: read() would emit 'data' to it, so it is not ours to take.
    const paused = buffered(['abc']);
    const seen: unknown[] = [];
    paused.on('data', (chunk) => seen.push(chunk));
    paused.pause();
    expect(peekBuffered(paused, '3')).toBeUndefined();
    expect(seen).toEqual([]);
  });
});

describe('NodeRequest.readBody', () => {
  const servers: Array<{ close(): void }> = [];
  afterEach(() => {
    for (const server of servers.splice(0)) server.close();
  });

  /**
   * Send `first` on a fresh connection, then `rest` once the server has the request: resolve with
   * what readBody returned, what the app read after it, and whether the body was peeked at.
   */
  async function exchange(first: string, rest?: string) {
    const started = deferred<void>();
    const seen = deferred<{ body: string; app: string; peeked: boolean }>();
    const server = createServer(async (req: IncomingMessage, res) => {
      // Read to its end, a message is given a fresh state holding the body (rearmBody); peeked at, never.
      const state = (req as unknown as { _readableState: unknown })._readableState;
      const reading = new NodeRequest(req, req).readBody(1024);
      started.resolve();
      const body = Buffer.from(await reading).toString();
      const peeked = (req as unknown as { _readableState: unknown })._readableState === state;
      const app = await text(req);
      seen.resolve({ body, app, peeked });
      res.end();
    });
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as { port: number };
    const socket = connect(port, '127.0.0.1');
    await once(socket, 'connect');
    socket.write(first);
    if (rest !== undefined) {
      await started.promise;
      socket.write(rest);
    }
    const result = await seen.promise;
    socket.destroy();
    return result;
  }

  const head = (length: number) => `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${length}\r\n\r\n`;

  it('F1: a body that came with its head is peeked at, and the app still reads all of it', async () => {
    const result = await exchange(`${head(15)}{"amount":1000}`);
    expect(result).toEqual({ body: '{"amount":1000}', app: '{"amount":1000}', peeked: true });
  });

  it('F1: a body still arriving is read to its end, and the app still reads all of it', async () => {
    const result = await exchange(`${head(15)}{"amount":`, '1000}');
    expect(result).toEqual({ body: '{"amount":1000}', app: '{"amount":1000}', peeked: false });
  });
});
