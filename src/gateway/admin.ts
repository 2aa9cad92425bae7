/**
 * @module The gateway's operations side: Prometheus metrics fed by the engine's events, and the admin
 * listener (`/healthz`, `/metrics`, `/records/:key`).
 */
import { createHash } from 'node:crypto';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineEvent } from '../core/events.js';
import type { Store } from '../core/store.js';
import { SENTINEL } from './stores.js';

/** Every value of the `outcome` label of `oncely_requests_total`. */
export const OUTCOMES = [
  'executed',
  'replayed',
  'conflict',
  'mismatch',
  'rejected',
  'store_error',
  'released',
  'fenced',
  'passed',
] as const;

const SECONDS_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * The gateway's metrics, in a registry of their own (several gateways may share one process).
 *
 * @example
 * const metrics = new GatewayMetrics();
 * const engine = new Engine({ onEvent: (event) => metrics.onEvent(event) });
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'oncely_requests_total',
    help: 'Requests through the gateway by what oncely decided (passed = not keyed, streamed untouched).',
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly upstreamSeconds = new Histogram({
    name: 'oncely_upstream_duration_seconds',
    help: 'Time from sending a request upstream to its response (headers for streamed, full body for keyed).',
    labelNames: ['result'],
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });
  readonly storeSeconds = new Histogram({
    name: 'oncely_store_duration_seconds',
    help: 'Time a keyed request spent waiting on the store.',
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });
  readonly inFlight = new Gauge({
    name: 'oncely_in_flight_requests',
    help: 'Requests the gateway is handling right now.',
    registers: [this.registry],
  });

  constructor() {
    // Zero every outcome so dashboards see the series before the first request.
    for (const outcome of OUTCOMES) this.requests.inc({ outcome }, 0);
  }

  /** Feed one engine decision. */
  onEvent(event: EngineEvent): void {
    this.requests.inc({ outcome: event.type });
    if (event.storeMs > 0) this.storeSeconds.observe(event.storeMs / 1_000);
  }
}

/** Options of {@link startAdmin}. */
export interface AdminOptions {
  host: string;
  port: number;
  store: Store;
  /** The metrics text and its content type (a cluster primary aggregates its workers'). */
  metrics: () => Promise<{ text: string; contentType: string }>;
}

/**
 * Start the admin listener. It never serves proxied traffic; bind it to a private address.
 *
 * @param options see {@link AdminOptions}
 * @example
 * const admin = await startAdmin({ host: '127.0.0.1', port: 9090, store, metrics: ... });
 */
export async function startAdmin(options: AdminOptions): Promise<{ server: Server; url: string }> {
  const { store } = options;
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://admin');
    try {
      if (req.method !== 'GET') return json(res, 405, { error: 'only GET' });
      if (url.pathname === '/healthz') {
        // A cheap read of a key that never exists proves the store answers.
        try {
          await withTimeout(store.get(SENTINEL.scope, SENTINEL.key), 2_000);
          return json(res, 200, { status: 'ok' });
        } catch (error) {
          return json(res, 503, { status: 'store_unavailable', error: oneLine(error) });
        }
      }
      if (url.pathname === '/metrics') {
        const { text, contentType } = await options.metrics();
        res.writeHead(200, { 'content-type': contentType });
        return res.end(text);
      }
      const match = /^\/records\/([^/]+)$/.exec(url.pathname);
      if (match) {
        const key = decodeURIComponent(match[1]!);
        const scope =
          url.searchParams.get('scope') ?? scopeOf([url.searchParams.get('authorization') ?? undefined]);
        const record = await store.get(scope, key);
        if (!record) return json(res, 404, { error: 'no live record for this scope and key' });
        return json(res, 200, recordJson(record));
      }
      return json(res, 404, { error: 'try /healthz, /metrics or /records/:key?scope=…' });
    } catch (error) {
      return json(res, 500, { error: oneLine(error) });
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  return { server, url: `http://${hostForUrl(options.host)}:${port}` };
}

/**
 * S1: the gateway's scope, a SHA-256 over the values of the scope headers (NUL-separated, empty when
 * absent). With the single default header `Authorization` it equals the engine's default scope.
 */
export function scopeOf(values: ReadonlyArray<string | undefined>): string {
  return createHash('sha256')
    .update(values.map((value) => value ?? '').join('\0'))
    .digest('hex');
}

/** A record for operators: never its body. */
export function recordJson(record: NonNullable<Awaited<ReturnType<Store['get']>>>): Record<string, unknown> {
  return {
    state: record.state,
    fingerprint: record.fingerprint,
    status: record.response?.status,
    bodyOmitted: record.response?.bodyOmitted,
    bodyBytes: record.response?.body.byteLength,
    updatedAt: new Date(record.updatedAt).toISOString(),
    expiresAt: new Date(record.expiresAt).toISOString(),
  };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(text);
}

function withTimeout<T>(promise: T | Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function oneLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0]!;
}

/** IPv6 literals need brackets in URLs. */
export function hostForUrl(host: string): string {
  const bare = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return bare.includes(':') ? `[${bare}]` : bare;
}
