/**
 * The HTTP conformance suite: every rule of SPEC K, M, F, R, L, T, S and P proven over a real
 * socket, against any adapter (a {@link ConformanceFixture}) and any store.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { EngineEvent } from '../../src/core/events.js';
import { defaultFingerprint, defaultScope } from '../../src/core/fingerprint.js';
import type { IdempotencyOptions } from '../../src/core/options.js';
import type { Store } from '../../src/core/store.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { ConformanceApp, type ConformanceFixture, deferred, type RunningServer } from './app.js';
import { type Received, type SendOptions, send, sendUntil } from './http.js';

export interface ConformanceOptions {
  /** Shown in the report; defaults to the fixture's name. */
  label?: string;
  /** The store under test, made once for the suite (keys are unique per test). @default MemoryStore */
  makeStore?: () => Store | Promise<Store>;
  /** Called after the suite, after the store is closed. */
  cleanup?: () => void | Promise<void>;
}

const JSON_BODY = '{"amount":1000,"currency":"usd"}';
const NO_AUTH_SCOPE = defaultScope({
  method: 'POST',
  url: '/',
  header: () => undefined,
  body: new Uint8Array(),
  raw: null,
});

/** A fresh random key, unique to one test. */
export const newKey = (): string => `k_${randomUUID().replaceAll('-', '')}`;

/** The default fingerprint of a JSON POST as `send()` makes it. */
function fingerprintOf(url: string, body: string, method = 'POST'): string {
  return defaultFingerprint({
    method,
    url,
    header: (name) => (name === 'content-type' ? 'application/json' : undefined),
    body: Buffer.from(body),
    raw: null,
  });
}

/** A store that counts and can tamper with calls. */
function spyStore(inner: Store, overrides: Partial<Store> = {}) {
  const calls = { acquire: 0, complete: 0, renew: 0, release: 0, get: 0 };
  const renewals: Array<{ count: number; resolve: () => void }> = [];
  const count = <A extends unknown[], R>(name: keyof typeof calls, call: (...args: A) => R) => {
    return (...args: A): R => {
      calls[name]++;
      return call(...args);
    };
  };
  const store: Store = {
    acquire: count('acquire', overrides.acquire ?? inner.acquire.bind(inner)),
    complete: count('complete', overrides.complete ?? inner.complete.bind(inner)),
    renew: (...args) => {
      calls.renew++;
      for (const waiter of renewals) if (calls.renew >= waiter.count) waiter.resolve();
      return (overrides.renew ?? inner.renew.bind(inner))(...args);
    },
    release: count('release', overrides.release ?? inner.release.bind(inner)),
    get: count('get', inner.get.bind(inner)),
    sweep: (limit) => inner.sweep(limit),
    close: async () => {},
  };
  const renewedTimes = (count: number) => {
    const waiter = deferred();
    renewals.push({ count, resolve: waiter.resolve });
    if (calls.renew >= count) waiter.resolve();
    return waiter.promise;
  };
  return { store, calls, renewedTimes };
}

const failing = (): Store => {
  const fail = () => Promise.reject(new Error('connection refused'));
  return {
    acquire: fail,
    complete: fail,
    renew: fail,
    release: fail,
    get: fail,
    sweep: fail,
    close: async () => {},
  };
};

export function describeConformance(fixture: ConformanceFixture, options: ConformanceOptions = {}): void {
  describe(`conformance: ${options.label ?? fixture.name}`, () => {
    let store: Store;
    const running: RunningServer[] = [];

    beforeAll(async () => {
      store = options.makeStore ? await options.makeStore() : new MemoryStore();
    });
    afterEach(async () => {
      await Promise.all(running.splice(0).map((server) => server.close()));
    });
    afterAll(async () => {
      await store?.close();
      await options.cleanup?.();
    });

    /** Start the fixture with a fresh app; `extra` overrides the suite's store and defaults. */
    async function serve(extra: IdempotencyOptions = {}) {
      const app = new ConformanceApp();
      const server = await fixture.start(app, { store, ...extra });
      running.push(server);
      const post = (o: SendOptions = {}) => send(server.url, { body: JSON_BODY, ...o });
      return { app, url: server.url, post };
    }

    const expectProblem = (received: Received, status: number, code: string) => {
      expect(received.status).toBe(status);
      expect(received.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(received.headers['cache-control']).toBe('no-store');
      const problem = received.json() as Record<string, unknown>;
      expect(problem).toMatchObject({ status, code });
      expect(typeof problem.type).toBe('string');
      expect(typeof problem.title).toBe('string');
      expect(typeof problem.detail).toBe('string');
    };

    describe('K — the key', () => {
      it('K1: the header name is matched case-insensitively', async () => {
        const { app, post } = await serve();
        const key = newKey();
        await post({ headers: { 'IDEMPOTENCY-KEY': key } });
        const again = await post({ headers: { 'idempotency-key': key } });
        expect(again.headers['idempotent-replayed']).toBe('true');
        expect(app.executions).toBe(1);
      });

      it('K2: a quoted sf-string and the bare token denote the same key; whitespace is ignored', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const first = await post({ key });
        const quoted = await post({ key: `"${key}"` });
        const spaced = await post({ key: `  ${key}\t` });
        expect(quoted.status).toBe(201);
        expect(quoted.headers['idempotent-replayed']).toBe('true');
        expect(spaced.headers['idempotent-replayed']).toBe('true');
        expect(quoted.body.equals(first.body)).toBe(true);
        expect(app.executions).toBe(1);
      });

      it.each([
        ['a 7-character key', 'abcdefg'],
        ['a 256-character key', 'a'.repeat(256)],
        ['a key with a dot', 'abcd.efgh'],
        ['a key with an inner space', 'abcd efgh'],
        ['a key with a non-ASCII letter', 'abcdefgé'],
        ['an empty key', ''],
        ['an unterminated quoted key', '"abcdefgh'],
      ])('K3: rejects %s with 400 and does not run the handler', async (_, key) => {
        const { app, post } = await serve();
        expectProblem(await post({ key }), 400, 'idempotency_key_invalid');
        expect(app.executions).toBe(0);
      });

      it('K3: accepts keys of exactly 8 and 255 characters of every allowed class', async () => {
        const { app, post } = await serve();
        const short = `aZ9-_${randomUUID().slice(0, 3)}`;
        expect((await post({ key: short })).status).toBe(201);
        expect((await post({ key: `x${randomUUID()}`.padEnd(255, 'y') })).status).toBe(201);
        expect(app.executions).toBe(2);
      });

      it('K3: a rejected key leaves the store untouched', async () => {
        const spy = spyStore(store);
        const { post } = await serve({ store: spy.store });
        await post({ key: 'short' });
        expect(spy.calls).toEqual({ acquire: 0, complete: 0, renew: 0, release: 0, get: 0 });
      });

      it('K4: several Idempotency-Key field lines are rejected with 400', async () => {
        const { app, post } = await serve();
        expectProblem(await post({ key: [newKey(), newKey()] }), 400, 'idempotency_key_invalid');
        expect(app.executions).toBe(0);
      });

      it('K4: a comma-joined value is rejected with 400', async () => {
        const { app, post } = await serve();
        expectProblem(await post({ key: `${newKey()}, ${newKey()}` }), 400, 'idempotency_key_invalid');
        expect(app.executions).toBe(0);
      });

      it('K5: keys are case-sensitive', async () => {
        const { app, post } = await serve();
        const key = `Ab${newKey()}`;
        await post({ key });
        const other = await post({ key: key.toLowerCase() });
        expect(other.headers['idempotent-replayed']).toBeUndefined();
        expect(app.executions).toBe(2);
      });

      it('K6: an invalid key on a method where keys do not take effect is ignored unread', async () => {
        const { app, url } = await serve();
        const received = await send(url, { method: 'GET', key: 'bad key!' });
        expect(received.status).toBe(201);
        expect(app.executions).toBe(1);
      });
    });

    describe('M — methods', () => {
      it('M1: keys take effect on PATCH', async () => {
        const { app, post } = await serve();
        const key = newKey();
        await post({ method: 'PATCH', key });
        const again = await post({ method: 'PATCH', key });
        expect(again.headers['idempotent-replayed']).toBe('true');
        expect(app.executions).toBe(1);
      });

      it('M1: the methods option chooses where keys take effect', async () => {
        const { app, post } = await serve({ methods: ['PUT'] });
        const key = newKey();
        await post({ method: 'PUT', key });
        expect((await post({ method: 'PUT', key })).headers['idempotent-replayed']).toBe('true');
        await post({ method: 'POST', key: newKey() });
        await post({ method: 'POST', key: newKey() });
        expect(app.executions).toBe(3);
      });

      it.each(['GET', 'DELETE', 'PUT', 'OPTIONS'])(
        'M2: a key on %s is ignored and nothing is recorded',
        async (method) => {
          const spy = spyStore(store);
          const { app, url } = await serve({ store: spy.store });
          const key = newKey();
          await send(url, { method, key });
          const again = await send(url, { method, key });
          expect(again.headers['idempotent-replayed']).toBeUndefined();
          expect(app.executions).toBe(2);
          expect(spy.calls.acquire).toBe(0);
        },
      );

      it('M2: a key on HEAD passes through', async () => {
        const { app, url } = await serve();
        const received = await send(url, { method: 'HEAD', key: newKey() });
        expect(received.status).toBe(201);
        expect(app.executions).toBe(1);
      });

      it("M2: onSafeMethodKey: 'reject' answers 400 idempotency_key_not_allowed", async () => {
        const { app, url } = await serve({ onSafeMethodKey: 'reject' });
        expectProblem(await send(url, { method: 'GET', key: newKey() }), 400, 'idempotency_key_not_allowed');
        expect((await send(url, { method: 'GET' })).status).toBe(201);
        expect(app.executions).toBe(1);
      });

      it('M3: a POST without a key passes through untouched every time', async () => {
        const { app, post } = await serve();
        await post();
        const again = await post();
        expect(again.status).toBe(201);
        expect(again.headers['idempotent-replayed']).toBeUndefined();
        expect(app.executions).toBe(2);
      });

      it('M3: required: true answers 400 idempotency_key_missing', async () => {
        const { app, post, url } = await serve({ required: true });
        expectProblem(await post(), 400, 'idempotency_key_missing');
        expect((await send(url, { method: 'GET' })).status).toBe(201);
        expect(app.executions).toBe(1);
      });
    });

    describe('F — fingerprint', () => {
      it.each<[string, SendOptions]>([
        ['body', { body: '{"amount":2000,"currency":"usd"}' }],
        ['path', { path: '/status/201' }],
        ['query string', { path: '/echo?x=1' }],
        ['method', { method: 'PATCH' }],
        ['content type', { headers: { 'content-type': 'text/plain' } }],
      ])(
        'F1, F2: the same key with another %s is answered 422 and the record is untouched',
        async (_, change) => {
          const { app, post } = await serve();
          const key = newKey();
          const first = await post({ key });
          expectProblem(await post({ key, ...change }), 422, 'idempotency_key_reused');
          const again = await post({ key });
          expect(again.body.equals(first.body)).toBe(true);
          expect(app.executions).toBe(1);
        },
      );

      it('F1: other headers are not part of the fingerprint', async () => {
        const { app, post } = await serve();
        const key = newKey();
        await post({ key, headers: { 'x-request-id': 'one' } });
        expect((await post({ key, headers: { 'x-request-id': 'two' } })).headers['idempotent-replayed']).toBe(
          'true',
        );
        expect(app.executions).toBe(1);
      });

      it('F1: the fingerprint option replaces the default', async () => {
        const { app, post } = await serve({ fingerprint: (request) => request.url });
        const key = newKey();
        await post({ key });
        expect((await post({ key, body: '{"other":true}' })).headers['idempotent-replayed']).toBe('true');
        expect(app.executions).toBe(1);
      });

      it('F2: a mismatch is answered 422 while the first request is still in flight', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const hold = app.hold();
        const first = post({ key, path: '/hold' });
        await hold.entered;
        expectProblem(
          await post({ key, path: '/hold', body: '{"other":true}' }),
          422,
          'idempotency_key_reused',
        );
        hold.release();
        expect((await first).status).toBe(201);
        expect(app.executions).toBe(1);
      });
    });

    describe('R — recording and replay', () => {
      it('R1, R2: the first request runs; a retry replays status, body and headers, marked Idempotent-Replayed', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const first = await post({ key });
        expect(first.status).toBe(201);
        expect(first.headers['idempotent-replayed']).toBeUndefined();
        const again = await post({ key });
        expect(again.status).toBe(201);
        expect(again.headers['idempotent-replayed']).toBe('true');
        expect(again.headers['x-execution']).toBe('1');
        expect(again.headers['content-type']).toBe(first.headers['content-type']);
        expect(again.body.equals(first.body)).toBe(true);
        expect(app.executions).toBe(1);
      });

      it('R1: error responses such as 500 are recorded and replayed too', async () => {
        const { app, post } = await serve();
        for (const status of [500, 404, 302]) {
          const key = newKey();
          const first = await post({ key, path: `/status/${status}` });
          const again = await post({ key, path: `/status/${status}` });
          expect(again.status).toBe(status);
          expect(again.headers['idempotent-replayed']).toBe('true');
          expect(again.body.equals(first.body)).toBe(true);
        }
        expect(app.executions).toBe(3);
      });

      it("R1: record: 'non-5xx' releases the key on a 5xx so a retry runs again", async () => {
        const { app, post } = await serve({ record: 'non-5xx' });
        const key = newKey();
        await post({ key, path: '/status/503' });
        const again = await post({ key, path: '/status/503' });
        expect(again.headers['idempotent-replayed']).toBeUndefined();
        expect(app.executions).toBe(2);
        const ok = newKey();
        await post({ key: ok, path: '/status/404' });
        expect((await post({ key: ok, path: '/status/404' })).headers['idempotent-replayed']).toBe('true');
      });

      it("R1: record: '2xx' records only successes", async () => {
        const { app, post } = await serve({ record: '2xx' });
        const key = newKey();
        await post({ key, path: '/status/409' });
        await post({ key, path: '/status/409' });
        expect(app.executions).toBe(2);
      });

      it('R2: Set-Cookie is not replayed, Date is fresh, Content-Length is recomputed', async () => {
        const { post } = await serve();
        const key = newKey();
        const first = await post({ key });
        expect(first.headers['set-cookie']).toBeDefined();
        const again = await post({ key });
        expect(again.headers['set-cookie']).toBeUndefined();
        expect(again.headers.date).toBeDefined();
        expect(Number(again.headers['content-length'])).toBe(again.body.length);
      });

      it('R2: repeated header fields are replayed', async () => {
        const { post } = await serve();
        const key = newKey();
        const first = await post({ key, path: '/multi' });
        const again = await post({ key, path: '/multi' });
        expect(again.headers['x-multi']).toBe(first.headers['x-multi']);
        expect(again.headers['x-multi']).toBe('a, b');
      });

      it('R3: a handler that throws records the error response, and a retry does not run it again', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const first = await post({ key, path: '/throw' });
        expect(first.status).toBeGreaterThanOrEqual(500);
        const again = await post({ key, path: '/throw' });
        expect(again.status).toBe(first.status);
        expect(again.headers['idempotent-replayed']).toBe('true');
        expect(again.body.equals(first.body)).toBe(true);
        expect(app.executions).toBe(1);
      });

      it('R3: a response stream that fails midway records a 500, so a retry never re-runs', async () => {
        const { app, post } = await serve();
        const key = newKey();
        await post({ key, path: '/stream-fail' }).catch(() => undefined);
        const again = await post({ key, path: '/stream-fail' });
        expect(again.status).toBe(500);
        expect(again.headers['idempotent-replayed']).toBe('true');
        expect(app.executions).toBe(1);
      });

      it('R4: responses oncely produces are not recorded', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const hold = app.hold();
        const first = post({ key, path: '/hold' });
        await hold.entered;
        expect((await post({ key, path: '/hold' })).status).toBe(409);
        expect((await post({ key, path: '/hold', body: '{}' })).status).toBe(422);
        hold.release();
        const original = await first;
        const again = await post({ key, path: '/hold' });
        expect(again.status).toBe(201);
        expect(again.body.equals(original.body)).toBe(true);
        expect(app.executions).toBe(1);
      });

      it.each([
        ['binary', '/binary'],
        ['empty 204', '/empty'],
        ['gzip-encoded', '/gzip'],
        ['201 with Location', '/created'],
      ])('R5: a %s response replays byte-exact', async (_, path) => {
        const { app, post } = await serve();
        const key = newKey();
        const first = await post({ key, path });
        const again = await post({ key, path });
        expect(again.status).toBe(first.status);
        expect(again.body.equals(first.body)).toBe(true);
        for (const name of ['content-type', 'content-encoding', 'location']) {
          expect(again.headers[name]).toBe(first.headers[name]);
        }
        expect(app.executions).toBe(1);
      });

      it('R6: the outcome is recorded before the response reaches the client', async () => {
        const { post } = await serve();
        const key = newKey();
        const first = await post({ key });
        const record = await store.get(NO_AUTH_SCOPE, key);
        expect(record?.state).toBe('completed');
        expect(record?.response?.status).toBe(first.status);
        expect(Buffer.from(record!.response!.body).equals(first.body)).toBe(true);
      });

      it('R7: a keyed body over maxRequestBytes is answered 413 before the handler runs', async () => {
        const { app, post } = await serve({ maxRequestBytes: 100 });
        const big = JSON.stringify({ pad: 'x'.repeat(200) });
        expectProblem(await post({ key: newKey(), body: big }), 413, 'request_too_large');
        expectProblem(await post({ key: newKey(), body: big, chunked: true }), 413, 'request_too_large');
        expect(app.executions).toBe(0);
        expect((await post({ body: big })).status).toBe(201);
      });

      it('R7: a body of exactly maxRequestBytes is accepted, streamed in chunks', async () => {
        const { app, post } = await serve({ maxRequestBytes: 100 });
        const body = JSON.stringify({ pad: 'x'.repeat(100 - 10) });
        expect(Buffer.byteLength(body)).toBe(100);
        const received = await post({ key: newKey(), body, chunked: true });
        expect(received.status).toBe(201);
        expect((received.json() as { body: string }).body).toBe(body);
        expect(app.executions).toBe(1);
      });

      it('R7: a response over maxResponseBytes reaches the first caller whole; replays omit the body', async () => {
        const { app, post } = await serve({ maxResponseBytes: 1024 });
        const key = newKey();
        const first = await post({ key, path: '/big?bytes=40000' });
        expect(first.status).toBe(200);
        expect(first.body.length).toBe(40_000);
        const again = await post({ key, path: '/big?bytes=40000' });
        expect(again.status).toBe(200);
        expect(again.headers['content-type']).toBe('application/octet-stream');
        expect(again.headers['idempotent-body-omitted']).toBe('true');
        expect(again.headers['idempotent-replayed']).toBe('true');
        expect(again.body.length).toBe(0);
        expect(app.executions).toBe(1);
      });

      it('R7: an event stream reaches the first caller whole; replays omit the body', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const first = await post({ key, path: '/sse' });
        expect(first.text.match(/^data:/gm)).toHaveLength(3);
        const again = await post({ key, path: '/sse' });
        expect(again.status).toBe(200);
        expect(again.headers['content-type']).toMatch(/^text\/event-stream/);
        expect(again.headers['idempotent-body-omitted']).toBe('true');
        expect(again.body.length).toBe(0);
        expect(app.executions).toBe(1);
      });
    });

    describe('L — in-flight lock', () => {
      it('L1, L2: a duplicate while the first is in flight gets 409 with Retry-After: 1', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const hold = app.hold();
        const first = post({ key, path: '/hold' });
        await hold.entered;
        const duplicate = await post({ key, path: '/hold' });
        expectProblem(duplicate, 409, 'idempotency_key_in_use');
        expect(duplicate.headers['retry-after']).toBe('1');
        hold.release();
        expect((await first).status).toBe(201);
        expect(app.executions).toBe(1);
      });

      it("L2: onInFlight: 'wait' holds the duplicate and replays the first outcome", async () => {
        const { app, post } = await serve({ onInFlight: 'wait', waitTimeoutMs: 20_000 });
        const key = newKey();
        const hold = app.hold();
        const first = post({ key, path: '/hold' });
        await hold.entered;
        const duplicate = post({ key, path: '/hold' });
        hold.release();
        const [original, waited] = await Promise.all([first, duplicate]);
        expect(waited.status).toBe(201);
        expect(waited.headers['idempotent-replayed']).toBe('true');
        expect(waited.body.equals(original.body)).toBe(true);
        expect(app.executions).toBe(1);
      });

      it("L2: onInFlight: 'wait' answers 409 when waitTimeoutMs passes", async () => {
        const { app, post } = await serve({ onInFlight: 'wait', waitTimeoutMs: 50 });
        const key = newKey();
        const hold = app.hold();
        const first = post({ key, path: '/hold' });
        await hold.entered;
        expectProblem(await post({ key, path: '/hold' }), 409, 'idempotency_key_in_use');
        hold.release();
        await first;
        expect(app.executions).toBe(1);
      });

      it('L3: the lease is renewed while the handler runs, so a long handler keeps its lock', async () => {
        const spy = spyStore(store);
        const { app, post } = await serve({ store: spy.store, lockTimeoutMs: 150 });
        const key = newKey();
        const hold = app.hold();
        const first = post({ key, path: '/hold' });
        await hold.entered;
        // Four renewals at a third of the lease each: the original lease has run out by now.
        await spy.renewedTimes(4);
        expect((await post({ key, path: '/hold' })).status).toBe(409);
        hold.release();
        expect((await first).status).toBe(201);
        expect(app.executions).toBe(1);
      });

      it('L3: when the holder dies its lease runs out and the next request runs as a new first request', async () => {
        const { app, post, url } = await serve();
        const key = newKey();
        // A holder that died: an in-flight record nobody will renew or complete.
        await store.acquire({
          scope: NO_AUTH_SCOPE,
          key,
          fingerprint: fingerprintOf('/echo', JSON_BODY),
          token: randomUUID(),
          leaseMs: 300,
        });
        expectProblem(await post({ key }), 409, 'idempotency_key_in_use');
        const ran = await sendUntil(url, { key, body: JSON_BODY }, (r) => r.status !== 409);
        expect(ran.status).toBe(201);
        expect(ran.headers['idempotent-replayed']).toBeUndefined();
        expect((await post({ key })).headers['idempotent-replayed']).toBe('true');
        expect(app.executions).toBe(1);
      });

      it('L4: a request whose lease was taken over cannot overwrite the new owner’s record', async () => {
        // A heartbeat that stalls (a long GC pause, a partition): renewals never reach the store.
        const spy = spyStore(store, { renew: async () => true });
        const events: EngineEvent[] = [];
        const { app, post, url } = await serve({
          store: spy.store,
          lockTimeoutMs: 100,
          onEvent: (e) => events.push(e),
        });
        const key = newKey();
        const hold = app.hold(1);
        const stale = post({ key, path: '/hold' });
        await hold.entered;
        const owner = await sendUntil(url, { key, path: '/hold', body: JSON_BODY }, (r) => r.status !== 409);
        expect(owner.status).toBe(201);
        expect(app.executions).toBe(2);
        hold.release();
        expect((await stale).status).toBe(201);
        expect(events.some((e) => e.type === 'fenced')).toBe(true);
        const again = await post({ key, path: '/hold' });
        expect(again.headers['idempotent-replayed']).toBe('true');
        expect(again.body.equals(owner.body)).toBe(true);
      });

      it('L5: twenty concurrent requests with one key run the handler exactly once', async () => {
        const { app, post } = await serve();
        const key = newKey();
        const results = await Promise.all(Array.from({ length: 20 }, () => post({ key })));
        expect(app.executions).toBe(1);
        for (const r of results) {
          if (r.status === 409) expectProblem(r, 409, 'idempotency_key_in_use');
          else expect(r.status).toBe(201);
        }
        expect(results.filter((r) => r.status === 201 && !r.headers['idempotent-replayed'])).toHaveLength(1);
      });
    });

    describe('T — retention', () => {
      it('T1: after ttlMs a completed key is a new first request', async () => {
        const { app, post, url } = await serve({ ttlMs: 100 });
        const key = newKey();
        await post({ key });
        const rerun = await sendUntil(
          url,
          { key, body: JSON_BODY },
          (r) => r.headers['idempotent-replayed'] === undefined,
        );
        expect(rerun.status).toBe(201);
        expect(rerun.headers['x-execution']).toBe('2');
        expect(app.executions).toBe(2);
      });
    });

    describe('S — scope, security, store failures', () => {
      it('S1: the same key under another Authorization is another record', async () => {
        const { app, post } = await serve();
        const key = newKey();
        await post({ key, headers: { authorization: 'Bearer alice' } });
        const bob = await post({ key, headers: { authorization: 'Bearer bob' } });
        expect(bob.headers['idempotent-replayed']).toBeUndefined();
        const alice = await post({ key, headers: { authorization: 'Bearer alice' } });
        expect(alice.headers['idempotent-replayed']).toBe('true');
        expect(app.executions).toBe(2);
      });

      it('S1: the scope option namespaces keys', async () => {
        const { app, post } = await serve({ scope: (request) => request.header('x-tenant') ?? 'none' });
        const key = newKey();
        await post({ key, headers: { 'x-tenant': 'a' } });
        await post({ key, headers: { 'x-tenant': 'b' } });
        expect((await post({ key, headers: { 'x-tenant': 'a' } })).headers['idempotent-replayed']).toBe(
          'true',
        );
        expect(app.executions).toBe(2);
      });

      it('S2: a failing store answers keyed requests 503 with Retry-After and runs nothing', async () => {
        const { app, post, url } = await serve({ store: failing() });
        const received = await post({ key: newKey() });
        expectProblem(received, 503, 'idempotency_store_unavailable');
        expect(received.headers['retry-after']).toBeDefined();
        expect(app.executions).toBe(0);
        expect((await post()).status).toBe(201);
        expect((await send(url, { method: 'GET', key: newKey() })).status).toBe(201);
      });

      it('S2: a store that hangs is timed out by storeTimeoutMs and answered 503', async () => {
        const hung: Store = { ...failing(), acquire: () => new Promise(() => {}) };
        const { app, post } = await serve({ store: hung, storeTimeoutMs: 50 });
        expectProblem(await post({ key: newKey() }), 503, 'idempotency_store_unavailable');
        expect(app.executions).toBe(0);
      });

      it("S2: onStoreError: 'fail-open' runs the handler unprotected and reports the error", async () => {
        const events: EngineEvent[] = [];
        const { app, post } = await serve({
          store: failing(),
          onStoreError: 'fail-open',
          onEvent: (e) => events.push(e),
        });
        expect((await post({ key: newKey() })).status).toBe(201);
        expect(app.executions).toBe(1);
        expect(events.find((e) => e.type === 'store_error')?.failOpen).toBe(true);
      });

      it('S3: events never carry more than the first 8 characters of a key', async () => {
        const events: EngineEvent[] = [];
        const { post } = await serve({ onEvent: (e) => events.push(e) });
        const key = newKey();
        await post({ key });
        await post({ key });
        await post({ key, body: '{}' });
        expect(events.map((e) => e.type)).toEqual(['executed', 'replayed', 'mismatch']);
        const logged = JSON.stringify(events);
        expect(logged).not.toContain(key.slice(0, 9));
        expect(logged).toContain(key.slice(0, 8));
      });
    });

    describe('P — responses oncely produces', () => {
      it('P1: every problem is application/problem+json with type, title, status, detail, code and no-store', async () => {
        const { app, post, url } = await serve({ required: true, maxRequestBytes: 64 });
        const strict = await serve({ onSafeMethodKey: 'reject' });
        const broken = await serve({ store: failing() });
        const key = newKey();
        const hold = app.hold();
        const first = post({ key, path: '/hold', body: '{}' });
        await hold.entered;
        const cases: Array<[Promise<Received>, number, string]> = [
          [post({ key: 'bad' }), 400, 'idempotency_key_invalid'],
          [post(), 400, 'idempotency_key_missing'],
          [send(strict.url, { method: 'GET', key: newKey() }), 400, 'idempotency_key_not_allowed'],
          [post({ key, path: '/hold', body: '{}' }), 409, 'idempotency_key_in_use'],
          [post({ key: newKey(), body: 'x'.repeat(65) }), 413, 'request_too_large'],
          [post({ key, path: '/hold', body: '{"a":1}' }), 422, 'idempotency_key_reused'],
          [broken.post({ key: newKey() }), 503, 'idempotency_store_unavailable'],
        ];
        for (const [received, status, code] of cases) expectProblem(await received, status, code);
        hold.release();
        await first;
        expect(url).toBeTruthy();
      });
    });
  });
}
