import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import type { Store } from '../../src/core/store.js';
import { scopeOf } from '../../src/gateway/admin.js';
import { type GatewayStartConfig, type RunningGateway, startGateway } from '../../src/gateway/server.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { deferred, freePort, LogLines, send, Upstream } from './helpers.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(config: Partial<GatewayStartConfig> = {}, store?: Store) {
  const upstream = new Upstream();
  const upstreamUrl = await upstream.listen();
  cleanups.push(() => upstream.close());
  const logs = new LogLines();
  const gateway = await startGateway(
    { upstream: upstreamUrl, admin: { host: '127.0.0.1', port: 0 }, ...config },
    { logDestination: logs, ...(store ? { store } : {}) },
  );
  cleanups.push(() => gateway.close());
  return { upstream, gateway, logs };
}

const json = { 'content-type': 'application/json' };
const keyed = (key: string, extra: Record<string, string> = {}) => ({
  ...json,
  'idempotency-key': key,
  ...extra,
});

function post(gateway: RunningGateway, path: string, key: string | undefined, body: string, extra = {}) {
  return send(gateway.url, {
    method: 'POST',
    path,
    headers: key ? keyed(key, extra) : { ...json, ...extra },
    body,
  });
}

describe('gateway: G1 (the SPEC through the proxy)', () => {
  it('G1: a keyed POST runs upstream once and its retry is replayed byte for byte (R1, R2)', async () => {
    const { upstream, gateway } = await setup();
    const first = await post(gateway, '/payments', 'key-replay-0001', '{"amount":1}');
    const second = await post(gateway, '/payments', 'key-replay-0001', '{"amount":1}');
    expect(first.status).toBe(201);
    expect(second.status).toBe(201);
    expect(second.body.equals(first.body)).toBe(true);
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(second.headers['x-upstream']).toBe('yes');
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(upstream.count('POST /payments')).toBe(1);
  });

  it('G1: a duplicate while the first is upstream gets 409 and does not reach the upstream (L2)', async () => {
    const { upstream, gateway } = await setup();
    const arrived = deferred();
    const release = deferred();
    upstream.routes.set('POST /slow', async (_req, res) => {
      arrived.resolve();
      await release.promise;
      res.writeHead(201).end('done');
    });
    const first = post(gateway, '/slow', 'key-conflict-01', 'x');
    await arrived.promise;
    const duplicate = await post(gateway, '/slow', 'key-conflict-01', 'x');
    expect(duplicate.status).toBe(409);
    expect(duplicate.headers['content-type']).toBe('application/problem+json');
    expect(JSON.parse(duplicate.body.toString()).code).toBe('idempotency_key_in_use');
    expect(duplicate.headers['retry-after']).toBe('1');
    release.resolve();
    expect((await first).status).toBe(201);
    expect(upstream.count('POST /slow')).toBe(1);
  });

  it('G1: the key reused with another body gets 422 and the upstream is not called (F2)', async () => {
    const { upstream, gateway } = await setup();
    await post(gateway, '/payments', 'key-mismatch-1', '{"amount":1}');
    const reused = await post(gateway, '/payments', 'key-mismatch-1', '{"amount":2}');
    expect(reused.status).toBe(422);
    expect(JSON.parse(reused.body.toString()).code).toBe('idempotency_key_reused');
    expect(upstream.count('POST /payments')).toBe(1);
  });

  it('G1: an invalid key gets 400 without reaching the upstream (K3)', async () => {
    const { upstream, gateway } = await setup();
    const reply = await post(gateway, '/payments', 'short', 'x');
    expect(reply.status).toBe(400);
    expect(JSON.parse(reply.body.toString()).code).toBe('idempotency_key_invalid');
    expect(upstream.count('POST /payments')).toBe(0);
  });

  it('G1: --require-key answers 400 to a POST without a key (M3)', async () => {
    const { upstream, gateway } = await setup({ requireKey: true });
    const reply = await post(gateway, '/payments', undefined, 'x');
    expect(reply.status).toBe(400);
    expect(JSON.parse(reply.body.toString()).code).toBe('idempotency_key_missing');
    expect(upstream.count('POST /payments')).toBe(0);
  });

  it('G1: keys are scoped by the --scope-header values, so tenants never share replays (S1)', async () => {
    const { upstream, gateway } = await setup({ scopeHeaders: ['x-tenant-id'] });
    const a = await post(gateway, '/payments', 'key-scoped-001', 'x', { 'x-tenant-id': 'a' });
    const b = await post(gateway, '/payments', 'key-scoped-001', 'x', { 'x-tenant-id': 'b' });
    expect(a.headers['idempotent-replayed']).toBeUndefined();
    expect(b.headers['idempotent-replayed']).toBeUndefined();
    expect(upstream.count('POST /payments')).toBe(2);
    const again = await post(gateway, '/payments', 'key-scoped-001', 'x', { 'x-tenant-id': 'a' });
    expect(again.headers['idempotent-replayed']).toBe('true');
  });

  it('G1: a keyed body over --max-request-bytes gets 413 before the upstream is called (R7)', async () => {
    const { upstream, gateway } = await setup({ maxRequestBytes: 100 });
    const reply = await post(gateway, '/payments', 'key-too-large-1', 'x'.repeat(101));
    expect(reply.status).toBe(413);
    expect(JSON.parse(reply.body.toString()).code).toBe('request_too_large');
    expect(upstream.count('POST /payments')).toBe(0);
  });

  it('G1: a response over --max-response-bytes is delivered in full, then replayed without its body (R7)', async () => {
    const { upstream, gateway } = await setup({ maxResponseBytes: 100 });
    const big = Buffer.alloc(5_000, 7);
    upstream.routes.set('POST /big', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-kind': 'big' });
      res.end(big);
    });
    const first = await post(gateway, '/big', 'key-big-body-01', 'x');
    expect(first.status).toBe(200);
    expect(first.body.equals(big)).toBe(true);
    const replay = await post(gateway, '/big', 'key-big-body-01', 'x');
    expect(replay.status).toBe(200);
    expect(replay.body.byteLength).toBe(0);
    expect(replay.headers['idempotent-body-omitted']).toBe('true');
    expect(replay.headers['x-kind']).toBe('big');
    expect(upstream.count('POST /big')).toBe(1);
  });
});

describe('gateway: G2 (upstream failures)', () => {
  it('G2: a refused connection answers 502 unrecorded, and a retry succeeds once the upstream is up', async () => {
    const port = await freePort();
    const store = new MemoryStore();
    const gateway = await startGateway(
      { upstream: `http://127.0.0.1:${port}` },
      { store, logDestination: new LogLines() },
    );
    cleanups.push(() => gateway.close());
    const refused = await post(gateway, '/payments', 'key-refused-001', 'x');
    expect(refused.status).toBe(502);
    expect(JSON.parse(refused.body.toString()).code).toBe('upstream_unreachable');
    expect(refused.headers['content-type']).toBe('application/problem+json');
    expect(await store.get(scopeOf([undefined]), 'key-refused-001')).toBeUndefined();

    const upstream = new Upstream();
    await upstream.listen(port);
    cleanups.push(() => upstream.close());
    const retry = await post(gateway, '/payments', 'key-refused-001', 'x');
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
    expect(upstream.count('POST /payments')).toBe(1);
  });

  it('G2: an upstream that drops the connection after reading the request: 502 recorded and replayed', async () => {
    const { upstream, gateway } = await setup();
    upstream.routes.set('POST /drop', (req) => {
      req.socket.destroy();
    });
    const first = await post(gateway, '/drop', 'key-dropped-001', 'x');
    expect(first.status).toBe(502);
    expect(JSON.parse(first.body.toString()).code).toBe('upstream_failed');
    const retry = await post(gateway, '/drop', 'key-dropped-001', 'x');
    expect(retry.status).toBe(502);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.body.equals(first.body)).toBe(true);
    expect(upstream.count('POST /drop')).toBe(1);
  });

  it('R3: an upstream that breaks off its response body midway: 500 response_incomplete recorded', async () => {
    const { upstream, gateway } = await setup();
    upstream.routes.set('POST /half', (_req, res) => {
      res.writeHead(200, { 'content-length': '1000' });
      res.write('only part of it');
      setImmediate(() => res.destroy());
    });
    const first = await post(gateway, '/half', 'key-halfbody-01', 'x');
    expect(first.status).toBe(500);
    expect(JSON.parse(first.body.toString()).code).toBe('response_incomplete');
    const retry = await post(gateway, '/half', 'key-halfbody-01', 'x');
    expect(retry.status).toBe(500);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(upstream.count('POST /half')).toBe(1);
  });

  it('G2: an upstream that does not answer within --upstream-timeout: 504 recorded and replayed', async () => {
    const { upstream, gateway } = await setup({ upstreamTimeoutMs: 200 });
    const never = deferred();
    cleanups.push(async () => never.resolve());
    upstream.routes.set('POST /hang', async (_req, res) => {
      await never.promise;
      res.end();
    });
    const first = await post(gateway, '/hang', 'key-timeout-001', 'x');
    expect(first.status).toBe(504);
    expect(JSON.parse(first.body.toString()).code).toBe('upstream_timeout');
    const retry = await post(gateway, '/hang', 'key-timeout-001', 'x');
    expect(retry.status).toBe(504);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(upstream.count('POST /hang')).toBe(1);
  });
});

describe('gateway: G2 (stalls mid-body)', () => {
  it('G2: an upstream that stalls mid-body longer than --upstream-timeout: 504 recorded and replayed', async () => {
    const { upstream, gateway } = await setup({ upstreamTimeoutMs: 200 });
    const never = deferred();
    cleanups.push(async () => never.resolve());
    upstream.routes.set('POST /stall', async (_req, res) => {
      res.writeHead(200, { 'content-length': '100' });
      res.write('some');
      await never.promise;
      res.end();
    });
    const first = await post(gateway, '/stall', 'key-stalled-001', 'x');
    expect(first.status).toBe(504);
    expect(JSON.parse(first.body.toString()).code).toBe('upstream_timeout');
    const retry = await post(gateway, '/stall', 'key-stalled-001', 'x');
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(upstream.count('POST /stall')).toBe(1);
  });
});

describe('gateway: G3 (everything else untouched)', () => {
  it('G3: a GET with a key passes through every time, nothing recorded (M2)', async () => {
    const { upstream, gateway } = await setup();
    upstream.routes.set('GET /thing', (_req, res) => {
      res.writeHead(200).end('thing');
    });
    for (let i = 0; i < 2; i++) {
      const reply = await send(gateway.url, {
        path: '/thing',
        headers: { 'idempotency-key': 'key-on-a-get-01' },
      });
      expect(reply.status).toBe(200);
      expect(reply.body.toString()).toBe('thing');
      expect(reply.headers['idempotent-replayed']).toBeUndefined();
    }
    expect(upstream.count('GET /thing')).toBe(2);
  });

  it('G3: an unkeyed POST runs every time', async () => {
    const { upstream, gateway } = await setup();
    await post(gateway, '/payments', undefined, 'x');
    await post(gateway, '/payments', undefined, 'x');
    expect(upstream.count('POST /payments')).toBe(2);
  });

  it('G3: unkeyed responses are streamed: the client gets the first chunk before the upstream ends', async () => {
    const { upstream, gateway } = await setup();
    const finish = deferred();
    upstream.routes.set('POST /stream', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk;');
      await finish.promise;
      res.end('last chunk');
    });
    const firstChunk = deferred<string>();
    const done = new Promise<string>((resolve, reject) => {
      const req = request(`${gateway.url}/stream`, { method: 'POST', agent: false }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => {
          text += chunk.toString();
          firstChunk.resolve(text);
        });
        res.on('end', () => resolve(text));
      });
      req.on('error', reject);
      req.end('body');
    });
    expect(await firstChunk.promise).toBe('first chunk;');
    finish.resolve();
    expect(await done).toBe('first chunk;last chunk');
  });

  it('G3: unkeyed request bodies are streamed: the upstream reads before the client has finished', async () => {
    const { upstream, gateway } = await setup();
    const gotFirst = deferred<string>();
    upstream.streaming.set('POST /upload', (req, res) => {
      let text = '';
      req.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        gotFirst.resolve(text);
      });
      req.on('end', () => res.writeHead(200).end(text));
    });
    const reply = new Promise<string>((resolve, reject) => {
      const req = request(`${gateway.url}/upload`, { method: 'POST', agent: false }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve(text));
      });
      req.on('error', reject);
      req.write('part one;');
      gotFirst.promise.then(() => req.end('part two'));
    });
    expect(await gotFirst.promise).toBe('part one;');
    expect(await reply).toBe('part one;part two');
  });

  it('G3: the upstream sees X-Forwarded-For/-Proto/-Host and no hop-by-hop request headers', async () => {
    const { upstream, gateway } = await setup();
    const host = new URL(gateway.url).host;
    for (const key of [undefined, 'key-forwarded-1']) {
      await send(gateway.url, {
        method: 'POST',
        path: '/echo',
        headers: {
          ...(key ? { 'idempotency-key': key } : {}),
          connection: 'keep-alive, x-hop',
          'x-hop': 'secret',
          'keep-alive': 'timeout=5',
          'proxy-authorization': 'Basic abc',
          te: 'trailers',
          'x-end-to-end': 'kept',
          'x-forwarded-for': '203.0.113.7',
        },
        body: 'x',
      });
      const seen = upstream.seen.at(-1)!.headers;
      expect(seen['x-forwarded-for']).toMatch(/^203\.0\.113\.7, (::ffff:)?127\.0\.0\.1$/);
      expect(seen['x-forwarded-proto']).toBe('http');
      expect(seen['x-forwarded-host']).toBe(host);
      expect(seen['x-end-to-end']).toBe('kept');
      for (const name of ['x-hop', 'keep-alive', 'proxy-authorization', 'te'])
        expect(seen[name]).toBeUndefined();
    }
  });

  it('G3: hop-by-hop response headers (and those named in Connection) do not reach the client', async () => {
    const { upstream, gateway } = await setup();
    upstream.routes.set('POST /hop', (_req, res) => {
      res.writeHead(200, { connection: 'keep-alive, x-resp-hop', 'x-resp-hop': '1', 'x-resp-end': '1' });
      res.end('ok');
    });
    for (const key of [undefined, 'key-resp-hop-01']) {
      const reply = await post(gateway, '/hop', key, 'x');
      expect(reply.headers['x-resp-end']).toBe('1');
      expect(reply.headers['x-resp-hop']).toBeUndefined();
    }
  });

  it('G3: an unkeyed request to an unreachable upstream gets a 502 problem', async () => {
    const port = await freePort();
    const gateway = await startGateway(
      { upstream: `http://127.0.0.1:${port}` },
      { logDestination: new LogLines() },
    );
    cleanups.push(() => gateway.close());
    const reply = await send(gateway.url, { path: '/anything' });
    expect(reply.status).toBe(502);
    expect(JSON.parse(reply.body.toString()).code).toBe('upstream_unreachable');
  });
});

describe('gateway: operations', () => {
  it('G1: /healthz, /records/:key and /metrics report what the engine decided', async () => {
    const { gateway } = await setup();
    const auth = { authorization: 'Bearer t1' };
    await post(gateway, '/payments', 'key-admin-0001', 'x', auth);
    await post(gateway, '/payments', 'key-admin-0001', 'x', auth);
    await post(gateway, '/payments', 'key-admin-0001', 'y', auth);
    await post(gateway, '/payments', undefined, 'x');

    const health = await send(gateway.adminUrl!, { path: '/healthz' });
    expect(health.status).toBe(200);

    const record = await send(gateway.adminUrl!, {
      path: '/records/key-admin-0001?authorization=Bearer%20t1',
    });
    expect(record.status).toBe(200);
    const view = JSON.parse(record.body.toString());
    expect(view).toMatchObject({ state: 'completed', status: 201 });
    expect(view.body).toBeUndefined();
    const byScope = await send(gateway.adminUrl!, {
      path: `/records/key-admin-0001?scope=${scopeOf(['Bearer t1'])}`,
    });
    expect(byScope.status).toBe(200);
    expect((await send(gateway.adminUrl!, { path: '/records/key-admin-0001' })).status).toBe(404);

    const metrics = (await send(gateway.adminUrl!, { path: '/metrics' })).body.toString();
    expect(metrics).toContain('oncely_requests_total{outcome="executed"} 1');
    expect(metrics).toContain('oncely_requests_total{outcome="replayed"} 1');
    expect(metrics).toContain('oncely_requests_total{outcome="mismatch"} 1');
    expect(metrics).toContain('oncely_requests_total{outcome="passed"} 1');
    expect(metrics).toContain('oncely_requests_total{outcome="conflict"} 0');
    expect(metrics).toMatch(/oncely_upstream_duration_seconds_count\{result="ok"\} 2/);
    expect(metrics).toContain('oncely_store_duration_seconds_count');
    expect(metrics).toContain('oncely_in_flight_requests 0');
  });

  it('S2: /healthz answers 503 when the store fails', async () => {
    const failing: Store = new MemoryStore();
    let broken = false;
    const get = failing.get.bind(failing);
    failing.get = (scope, key) => (broken ? Promise.reject(new Error('store down')) : get(scope, key));
    const { gateway } = await setup({}, failing);
    broken = true;
    const health = await send(gateway.adminUrl!, { path: '/healthz' });
    expect(health.status).toBe(503);
    expect(JSON.parse(health.body.toString()).status).toBe('store_unavailable');
  });

  it('S3: log lines carry outcome, status and durations, and never more than 8 characters of a key', async () => {
    const { gateway, logs } = await setup();
    const key = 'abcdefghIJKLMNOP-secret-tail-123';
    await post(gateway, '/payments', key, 'x');
    await post(gateway, '/payments', key, 'x');
    await post(gateway, '/payments', key, 'other');
    await new Promise<void>((resolve) => gateway.logger.flush(() => resolve()));
    const lines = logs.parsed().filter((line) => line.outcome !== undefined);
    expect(lines.map((line) => line.outcome)).toEqual(['executed', 'replayed', 'mismatch']);
    expect(lines[0]).toMatchObject({ status: 201, method: 'POST', path: '/payments' });
    expect(typeof lines[0]!.durationMs).toBe('number');
    expect(typeof lines[0]!.upstreamMs).toBe('number');
    expect(typeof lines[0]!.storeMs).toBe('number');
    expect(logs.lines.some((line) => line.includes(key.slice(0, 8)))).toBe(true);
    for (const line of logs.lines) expect(line).not.toContain(key.slice(0, 9));
  });
});
