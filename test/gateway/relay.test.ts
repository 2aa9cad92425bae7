import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startGateway } from '../../src/gateway/server.js';
import { deferred, LogLines, send, Upstream } from './helpers.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('gateway relay (unkeyed streaming)', () => {
  it('G3: a client hanging up mid-response stops the upstream stream, and the gateway keeps serving', async () => {
    const upstream = new Upstream();
    const upstreamUrl = await upstream.listen();
    cleanups.push(() => upstream.close());
    const upstreamClosed = deferred();
    upstream.streaming.set('GET /stream', (_req, res) => {
      res.on('close', () => upstreamClosed.resolve());
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk');
    });
    const gateway = await startGateway({ upstream: upstreamUrl }, { logDestination: new LogLines() });
    cleanups.push(() => gateway.close());

    const firstChunk = deferred();
    const client = request(new URL('/stream', gateway.url), { agent: false }, (res) => {
      res.once('data', () => firstChunk.resolve());
      res.on('error', () => {});
    });
    client.on('error', () => {});
    client.end();
    await firstChunk.promise;
    client.destroy();

    // The upstream's response is torn down: the gateway stopped reading it.
    await upstreamClosed.promise;
    const next = await send(gateway.url, { method: 'GET', path: '/after' });
    expect(next.status).toBe(201);
  });

  it('G3: an upstream breaking mid-body cuts the client response off, and the gateway keeps serving', async () => {
    const upstream = new Upstream();
    const upstreamUrl = await upstream.listen();
    cleanups.push(() => upstream.close());
    upstream.streaming.set('GET /broken', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' });
      res.write('only part', () => res.destroy());
    });
    const gateway = await startGateway({ upstream: upstreamUrl }, { logDestination: new LogLines() });
    cleanups.push(() => gateway.close());

    await expect(send(gateway.url, { method: 'GET', path: '/broken' })).rejects.toThrow();
    const next = await send(gateway.url, { method: 'GET', path: '/after' });
    expect(next.status).toBe(201);
  });

  it('G3: an unkeyed body is forwarded byte for byte, whole or streamed while it is still arriving', async () => {
    const upstream = new Upstream();
    const upstreamUrl = await upstream.listen();
    cleanups.push(() => upstream.close());
    const firstPart = deferred();
    upstream.streaming.set('POST /upload', (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        firstPart.resolve();
      });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({ length: req.headers['content-length'], body: Buffer.concat(chunks).toString() }),
        );
      });
    });
    const gateway = await startGateway({ upstream: upstreamUrl }, { logDestination: new LogLines() });
    cleanups.push(() => gateway.close());

    const whole = await send(gateway.url, {
      method: 'POST',
      path: '/upload',
      headers: { 'content-type': 'text/plain' },
      body: 'all at once',
    });
    expect(JSON.parse(whole.body.toString())).toEqual({ length: '11', body: 'all at once' });

    // The second half is sent only once the upstream has the first: the body was not held back.
    const answer = deferred<string>();
    const client = request(
      new URL('/upload', gateway.url),
      { method: 'POST', agent: false, headers: { 'content-length': '10' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => answer.resolve(Buffer.concat(chunks).toString()));
      },
    );
    client.write('first');
    await firstPart.promise;
    client.end('-last');
    expect(JSON.parse(await answer.promise)).toEqual({ length: '10', body: 'first-last' });
  });
});
