import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MemoryStore } from '../stores/memory.js';
import { Engine, type IncomingRequest, type OutgoingResponse, PASS } from './engine.js';
import { RequestTooLargeError } from './errors.js';
import type { EngineEvent } from './events.js';
import { defaultScope } from './fingerprint.js';
import type { IdempotencyRequest } from './request.js';
import type { Store } from './store.js';

const encoder = new TextEncoder();

function incoming(
  method: string,
  headers: Record<string, string>,
  body: Uint8Array = encoder.encode('{}'),
  url = '/payments',
): IncomingRequest<null> {
  return {
    method,
    url,
    header: (name) => headers[name],
    readBody: async (limit) => {
      if (body.byteLength > limit) throw new RequestTooLargeError(limit);
      return body;
    },
    raw: null,
  };
}

/** A request whose body is in hand: `readBody` answers (or throws) at once, as an adapter that peeked. */
function inHand(
  headers: Record<string, string>,
  body: Uint8Array = encoder.encode('{}'),
): IncomingRequest<null> {
  return {
    method: 'POST',
    url: '/payments',
    header: (name) => headers[name],
    readBody: (limit) => {
      if (body.byteLength > limit) throw new RequestTooLargeError(limit);
      return body;
    },
    raw: null,
  };
}

const ok = (status = 201): OutgoingResponse => ({
  status,
  headers: { 'content-type': 'application/json' },
  body: encoder.encode('{"ok":true}'),
});

function expectProblem(response: OutgoingResponse) {
  expect(response.headers['content-type']).toBe('application/problem+json');
  expect(response.headers['cache-control']).toBe('no-store');
  const problem = JSON.parse(new TextDecoder().decode(response.body));
  expect(Object.keys(problem).sort()).toEqual(['code', 'detail', 'status', 'title', 'type']);
  expect(problem.status).toBe(response.status);
}

afterEach(() => {
  vi.useRealTimers();
});

describe('Engine.begin', () => {
  it('K6, M2, M3: unkeyed requests and other methods pass synchronously, untouched', () => {
    const engine = new Engine();
    expect(engine.begin(incoming('POST', {}))).toBe(PASS);
    expect(engine.begin(incoming('GET', { 'idempotency-key': 'not a key' }))).toBe(PASS);
  });

  it('K6, M2, M3: passes() is true exactly when begin() answers PASS, for every method, key and option', async () => {
    const cases = fc.record({
      method: fc.constantFrom('POST', 'PATCH', 'GET', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PURGE'),
      key: fc.constantFrom(undefined, 'abcdefgh', 'bad key'),
      required: fc.boolean(),
      onSafeMethodKey: fc.constantFrom('ignore' as const, 'reject' as const),
      methods: fc.constantFrom(undefined, ['POST'], ['PUT', 'DELETE']),
    });
    await fc.assert(
      fc.asyncProperty(cases, async ({ method, key, required, onSafeMethodKey, methods }) => {
        const engine = new Engine<null>({ required, onSafeMethodKey, methods });
        const headers: Record<string, string> = key === undefined ? {} : { 'idempotency-key': key };
        const decision = engine.begin(incoming(method, headers));
        expect(engine.passes(method, key !== undefined)).toBe(decision === PASS);
        if (decision instanceof Promise) await decision;
        await engine.close();
      }),
      { numRuns: 300 },
    );
  });

  it('P1: no generated input throws out of the engine; every answer is a decision, every rejection a problem (3,000 inputs)', async () => {
    const engine = new Engine<null>({ maxRequestBytes: 64 });
    const method = fc.constantFrom(
      'POST',
      'PATCH',
      'GET',
      'PUT',
      'DELETE',
      'HEAD',
      'OPTIONS',
      'post',
      'PURGE',
    );
    const key = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.uuid(), fc.constant(undefined));
    await fc.assert(
      fc.asyncProperty(
        method,
        key,
        fc.uint8Array({ maxLength: 100 }),
        fc.string(),
        async (m, k, body, path) => {
          const headers: Record<string, string> = {};
          if (k !== undefined) headers['idempotency-key'] = k;
          const decision = await engine.begin(incoming(m, headers, body, `/${path}`));
          if (decision.action === 'respond') {
            if (decision.response.headers['idempotent-replayed'] === undefined)
              expectProblem(decision.response);
          } else if (decision.action === 'execute') {
            await decision.execution.complete(ok());
          }
        },
      ),
      { numRuns: 3_000 },
    );
  });

  it('R7: a body over maxRequestBytes is a 413 problem', async () => {
    const engine = new Engine({ maxRequestBytes: 2 });
    const decision = await engine.begin(
      incoming('POST', { 'idempotency-key': 'abcdefgh' }, encoder.encode('abc')),
    );
    expect(decision.action === 'respond' && decision.response.status).toBe(413);
  });

  it('F1: the scope and fingerprint callbacks see the request with its body', async () => {
    const seen: string[] = [];
    const engine = new Engine<null>({
      scope: (r) => {
        seen.push(`scope:${new TextDecoder().decode(r.body)}`);
        return 't1';
      },
      fingerprint: (r) => {
        seen.push(`fp:${r.method} ${r.url}`);
        return 'fp';
      },
    });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    expect(decision.action).toBe('execute');
    expect(seen).toEqual(['scope:{}', 'fp:POST /payments']);
  });
  it('L1, R2: with the body in hand and a store that answers at once, keyed requests are decided without a promise', async () => {
    const store = new MemoryStore();
    const engine = new Engine<null>({ store });
    const first = engine.begin(inHand({ 'idempotency-key': 'abcdefgh' }));
    if (first instanceof Promise || first.action !== 'execute') throw new Error('expected execute, at once');
    const conflict = engine.begin(inHand({ 'idempotency-key': 'abcdefgh' }));
    expect(!(conflict instanceof Promise) && conflict.action === 'respond' && conflict.response.status).toBe(
      409,
    );
    await first.execution.complete(ok());
    const replay = engine.begin(inHand({ 'idempotency-key': 'abcdefgh' }));
    if (replay instanceof Promise || replay.action !== 'respond')
      throw new Error('expected a replay, at once');
    expect(replay.response.headers['idempotent-replayed']).toBe('true');
    await store.close();
  });

  it('R7: a readBody that throws RequestTooLargeError at once is a 413 problem', () => {
    const engine = new Engine<null>({ maxRequestBytes: 2 });
    const decision = engine.begin(inHand({ 'idempotency-key': 'abcdefgh' }, encoder.encode('abc')));
    if (decision instanceof Promise || decision.action !== 'respond') throw new Error('expected a problem');
    expect(decision.response.status).toBe(413);
    expectProblem(decision.response);
  });

  it('F1, S1: a callback that throws rejects the decision rather than throwing out of begin()', async () => {
    const engine = new Engine<null>({
      scope: () => {
        throw new Error('no tenant');
      },
    });
    let decision: ReturnType<typeof engine.begin> | undefined;
    expect(() => {
      decision = engine.begin(inHand({ 'idempotency-key': 'abcdefgh' }));
    }).not.toThrow();
    await expect(decision).rejects.toThrow('no tenant');
  });

  it('P1: a readBody that throws anything else at once rejects the decision rather than throwing out of begin()', async () => {
    const engine = new Engine<null>();
    const request: IncomingRequest<null> = {
      ...inHand({ 'idempotency-key': 'abcdefgh' }),
      readBody: () => {
        throw new Error('socket gone');
      },
    };
    let decision: ReturnType<typeof engine.begin> | undefined;
    expect(() => {
      decision = engine.begin(request);
    }).not.toThrow();
    await expect(decision).rejects.toThrow('socket gone');
    await engine.close();
  });

  it('F1: a fingerprint callback runs once, also when it returns something other than a string', async () => {
    const fingerprint = vi.fn(() => 42 as unknown as string);
    const engine = new Engine<null>({ fingerprint });
    await expect(engine.begin(inHand({ 'idempotency-key': 'abcdefgh' }))).rejects.toThrow(
      'options.fingerprint must return a string',
    );
    expect(fingerprint).toHaveBeenCalledTimes(1);
  });

  it('F1, S1: async callbacks are awaited in turn, scope first, and their results used', async () => {
    const seen: string[] = [];
    const store = new MemoryStore();
    const acquire = vi.spyOn(store, 'acquire');
    const engine = new Engine<null>({
      store,
      scope: async () => {
        await new Promise((resolve) => setImmediate(resolve));
        seen.push('scope');
        return 'tenant-1';
      },
      fingerprint: async () => {
        seen.push('fingerprint');
        return 'fp-1';
      },
    });
    const decision = await engine.begin(inHand({ 'idempotency-key': 'abcdefgh' }));
    expect(decision.action).toBe('execute');
    expect(seen).toEqual(['scope', 'fingerprint']);
    expect(acquire).toHaveBeenCalledWith(expect.objectContaining({ scope: 'tenant-1', fingerprint: 'fp-1' }));
    await store.close();
  });
});

describe('Execution', () => {
  it('L3: renews the lease every third of lockTimeoutMs while the handler runs, and stops after', async () => {
    vi.useFakeTimers();
    const store = new MemoryStore();
    const renew = vi.spyOn(store, 'renew');
    const engine = new Engine({ store, lockTimeoutMs: 3_000 });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    await vi.advanceTimersByTimeAsync(3_100);
    expect(renew).toHaveBeenCalledTimes(3);
    await decision.execution.complete(ok());
    await vi.advanceTimersByTimeAsync(10_000);
    expect(renew).toHaveBeenCalledTimes(3);
    await store.close();
  });

  it('L4: every acquisition gets its own token, and a freshly loaded engine (another process) never repeats one', async () => {
    const tokensOf = async (EngineClass: typeof Engine, count: number) => {
      const store = new MemoryStore();
      const acquire = vi.spyOn(store, 'acquire');
      const engine = new EngineClass({ store });
      for (let i = 0; i < count; i++) {
        const decision = await engine.begin(incoming('POST', { 'idempotency-key': `key-${i}-abcdef` }));
        if (decision.action !== 'execute') throw new Error('expected execute');
        await decision.execution.complete(ok());
      }
      await store.close();
      return acquire.mock.calls.map(([input]) => input.token);
    };
    const here = await tokensOf(Engine, 500);
    vi.resetModules(); // a second evaluation of the module, as in a second process
    const fresh = (await import('./engine.js')) as typeof import('./engine.js');
    expect(fresh.Engine).not.toBe(Engine);
    const there = await tokensOf(fresh.Engine, 500);
    expect(new Set([...here, ...there]).size).toBe(1_000);
  });

  it('L4: a renewal that finds the lease taken over marks the execution lost, and its outcome is refused', async () => {
    vi.useFakeTimers();
    const store = new MemoryStore();
    const events: EngineEvent[] = [];
    const engine = new Engine({ store, lockTimeoutMs: 300, onEvent: (e) => events.push(e) });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    vi.spyOn(store, 'renew').mockResolvedValue(false);
    await vi.advanceTimersByTimeAsync(150);
    expect(decision.execution.lost).toBe(true);
    vi.spyOn(store, 'complete').mockResolvedValue(false);
    const sent = await decision.execution.complete(ok());
    expect(sent.status).toBe(201);
    expect(events.map((e) => e.type)).toEqual(['fenced']);
    await store.close();
  });

  it('S2: a store failure while recording is reported, and the response still goes out', async () => {
    const store = new MemoryStore();
    const events: EngineEvent[] = [];
    const engine = new Engine({ store, onEvent: (e) => events.push(e) });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    vi.spyOn(store, 'complete').mockRejectedValue(new Error('down'));
    expect((await decision.execution.complete(ok())).status).toBe(201);
    expect(events.map((e) => e.type)).toEqual(['store_error']);
    await store.close();
  });

  it('R1: completing twice records once', async () => {
    const store = new MemoryStore();
    const complete = vi.spyOn(store, 'complete');
    const engine = new Engine({ store });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    await decision.execution.complete(ok());
    await decision.execution.complete(ok(500));
    await decision.execution.release();
    expect(complete).toHaveBeenCalledTimes(1);
    await store.close();
  });

  it('R7: a declared Content-Length over maxResponseBytes or an event stream is streamed', async () => {
    const engine = new Engine({ maxResponseBytes: 10 });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    const { execution } = decision;
    expect(execution.streams({ 'content-length': '11' })).toBe(true);
    expect(execution.streams({ 'content-length': '10' })).toBe(false);
    expect(execution.streams({ 'content-type': 'text/event-stream; charset=utf-8' })).toBe(true);
    expect(execution.streams({ 'content-type': 'application/json' })).toBe(false);
    await execution.release();
  });

  it('R2: recorded headers drop hop-by-hop fields, cookies, Date, Content-Length and fields named by Connection', async () => {
    const store = new MemoryStore();
    const engine = new Engine({ store });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    await decision.execution.complete({
      status: 200,
      headers: {
        connection: 'x-secret, close',
        'x-secret': '1',
        'keep-alive': 'timeout=5',
        'transfer-encoding': 'chunked',
        'proxy-authenticate': 'Basic',
        'set-cookie': ['a=1'],
        date: 'yesterday',
        'content-length': '2',
        'Content-Type': 'text/plain',
        etag: '"v1"',
      },
      body: encoder.encode('hi'),
    });
    const replay = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    expect(replay.action === 'respond' && replay.response.headers).toEqual({
      'content-type': 'text/plain',
      etag: '"v1"',
      'idempotent-replayed': 'true',
    });
    await store.close();
  });
});

describe('Execution, headers named __proto__', () => {
  it("R2: a header named __proto__ is not recorded and cannot change a record's prototype", async () => {
    const store = new MemoryStore();
    const engine = new Engine({ store });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    // What node's getHeaders() hands over for res.setHeader('__proto__', [...]): an own property.
    const headers = JSON.parse('{"__proto__":["0","1"],"etag":"\\"v1\\""}');
    await decision.execution.complete({ status: 200, headers, body: encoder.encode('hi') });
    const recorded = (
      await store.get(defaultScope({ header: () => undefined } as unknown as IdempotencyRequest), 'abcdefgh')
    )?.response?.headers;
    expect(recorded && Object.getPrototypeOf(recorded)).toBe(Object.prototype);
    expect(recorded).toEqual({ etag: '"v1"' });
    const replay = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (replay.action !== 'respond') throw new Error('expected a replay');
    const names: string[] = [];
    for (const name in replay.response.headers) names.push(name);
    expect(names).toEqual(['etag', 'idempotent-replayed']);
    expect(Object.getPrototypeOf(replay.response.headers)).toBe(Object.prototype);
    await store.close();
  });

  it('R2: a stored record read back from JSON with an own __proto__ header replays without it', async () => {
    const store = new MemoryStore();
    const fromJson: Store = {
      complete: (...args) => store.complete(...args),
      renew: (...args) => store.renew(...args),
      release: (...args) => store.release(...args),
      get: (...args) => store.get(...args),
      sweep: (...args) => store.sweep(...args),
      close: () => store.close(),
      acquire: async (input) => {
        const result = await store.acquire(input);
        if (result.state !== 'completed') return result;
        // As a JSON-backed store (PostgreSQL, Redis, SQLite) would parse a tampered record.
        const headers = JSON.parse('{"__proto__":["0","1"],"etag":"v1"}');
        return { ...result, response: { ...result.response, headers } };
      },
    };
    const engine = new Engine({ store: fromJson });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    await decision.execution.complete(ok());
    const replay = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (replay.action !== 'respond') throw new Error('expected a replay');
    const names: string[] = [];
    for (const name in replay.response.headers) names.push(name);
    expect(names).toEqual(['etag', 'idempotent-replayed']);
    await store.close();
  });
});

describe('Engine events', () => {
  it('S3: report each decision with timing and a key cut to 8 characters', async () => {
    const events: EngineEvent[] = [];
    const engine = new Engine({ onEvent: (e) => events.push(e) });
    const key = 'abcdefgh-secret-part';
    const first = await engine.begin(incoming('POST', { 'idempotency-key': key }));
    if (first.action !== 'execute') throw new Error('expected execute');
    const conflict = await engine.begin(incoming('POST', { 'idempotency-key': key }));
    expect(conflict.action === 'respond' && conflict.response.status).toBe(409);
    await first.execution.complete(ok());
    await engine.begin(incoming('POST', { 'idempotency-key': key }));
    await engine.begin(incoming('POST', { 'idempotency-key': 'short' }));
    expect(events.map((e) => [e.type, e.status, e.key])).toEqual([
      ['conflict', 409, 'abcdefgh…'],
      ['executed', 201, 'abcdefgh…'],
      ['replayed', 201, 'abcdefgh…'],
      ['rejected', 400, undefined],
    ]);
    for (const event of events) expect(event.durationMs).toBeGreaterThanOrEqual(0);
    expect(JSON.stringify(events)).not.toContain('secret');
    await engine.close();
  });

  it('a throwing listener does not change the outcome', async () => {
    const engine = new Engine({
      onEvent: () => {
        throw new Error('listener bug');
      },
    });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'short' }));
    expect(decision.action === 'respond' && decision.response.status).toBe(400);
  });

  it('S2: a store that throws instead of rejecting is a store failure, on every call', async () => {
    const events: EngineEvent[] = [];
    const store = new MemoryStore();
    const engine = new Engine({ store, lockTimeoutMs: 300, onEvent: (e) => events.push(e) });
    const thrown = (name: string) => () => {
      throw new Error(`${name} threw`);
    };
    // acquire: answered 503, as when it rejects.
    const acquire = vi.spyOn(store, 'acquire').mockImplementationOnce(thrown('acquire'));
    const refused = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    expect(refused.action === 'respond' && refused.response.status).toBe(503);
    acquire.mockRestore();
    // renew, then complete: reported, and the handler's response still goes out.
    vi.useFakeTimers();
    vi.spyOn(store, 'renew').mockImplementation(thrown('renew'));
    vi.spyOn(store, 'complete').mockImplementation(thrown('complete'));
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    if (decision.action !== 'execute') throw new Error('expected execute');
    await vi.advanceTimersByTimeAsync(150);
    expect((await decision.execution.complete(ok())).status).toBe(201);
    // release: reported, and the execution still counts as released.
    vi.spyOn(store, 'release').mockImplementation(thrown('release'));
    const second = await engine.begin(incoming('POST', { 'idempotency-key': 'ijklmnop' }));
    if (second.action !== 'execute') throw new Error('expected execute');
    await second.execution.release();
    const failures = events.filter((e) => e.type === 'store_error').map((e) => (e.error as Error).message);
    expect(failures).toEqual(['acquire threw', 'renew threw', 'complete threw', 'release threw']);
    expect(events.at(-1)?.type).toBe('released');
    await store.close();
  });

  it('S2: store calls that hang are cut off after storeTimeoutMs', async () => {
    const hung: Store = new MemoryStore();
    vi.spyOn(hung, 'acquire').mockReturnValue(new Promise(() => {}));
    const events: EngineEvent[] = [];
    const engine = new Engine({ store: hung, storeTimeoutMs: 20, onEvent: (e) => events.push(e) });
    const decision = await engine.begin(incoming('POST', { 'idempotency-key': 'abcdefgh' }));
    expect(decision.action === 'respond' && decision.response.status).toBe(503);
    expect((events[0]?.error as Error | undefined)?.message).toMatch(
      /acquire\(\) did not answer within 20 ms/,
    );
    await hung.close();
  });
});
