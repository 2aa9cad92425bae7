/**
 * @module The gateway's programmatic API: `startGateway(config)` runs the proxy (and optionally its
 * admin listener) in this process.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type DestinationStream, type Logger, pino } from 'pino';
import type { IdempotencyOptions } from '../core/options.js';
import type { Store } from '../core/store.js';
import { GatewayMetrics, hostForUrl, scopeOf, startAdmin } from './admin.js';
import { DEFAULT_UPSTREAM_TIMEOUT_MS, type GatewayConfig } from './config.js';
import { createProxy, describeEvent, GatewayEngine } from './proxy.js';
import { type OpenedStore, openStore } from './stores.js';

/** A running gateway. */
export interface RunningGateway {
  /** Where the proxy listens, e.g. `http://127.0.0.1:8787`. */
  url: string;
  /** Where the admin listener listens, when `config.admin` is set. */
  adminUrl: string | undefined;
  store: Store;
  metrics: GatewayMetrics;
  logger: Logger;
  /**
   * Graceful stop: stop accepting connections, let in-flight requests finish (their outcomes are
   * recorded), then close the upstream pool and the store. Safe to call twice.
   */
  close(): Promise<void>;
}

/** What the programmatic API adds to the CLI's config; every field is optional. */
export interface GatewayRuntime {
  /** Use this store instead of opening `config.store` (the caller keeps ownership and closes it). */
  store?: Store;
  /** Where log lines go. @default stdout */
  logDestination?: DestinationStream;
  /**
   * Engine options beyond what the CLI offers (a `scope` or `fingerprint` function, `record`,
   * `onInFlight`, …). They override the config's; an `onEvent` here runs after the gateway's own.
   */
  engineOptions?: Omit<IdempotencyOptions<IncomingMessage>, 'store'>;
}

/** The config fields a programmatic caller must give; the rest take the CLI's defaults. */
export type GatewayStartConfig = Partial<GatewayConfig> & { upstream: string };

/**
 * Start a gateway in this process: the proxy in front of `config.upstream`, and the admin listener
 * when `config.admin` is set. Resolves once both listen; rejects if the store does not answer.
 *
 * @param config the CLI's config (see `parseGatewayArgs`); defaults: listen 127.0.0.1:0 here (a free
 *   port), store `memory:`, ttl 24 h, lock timeout 60 s, methods POST/PATCH, scope `Authorization`
 * @param runtime optional store and log destination
 * @example
 * const gateway = await startGateway({ upstream: 'http://127.0.0.1:8080', store: 'sqlite:./oncely.db' });
 * console.log(gateway.url);
 * await gateway.close();
 */
export async function startGateway(
  config: GatewayStartConfig,
  runtime: GatewayRuntime = {},
): Promise<RunningGateway> {
  const settings = withDefaults(config);
  const logger = pino(
    { level: settings.logLevel, base: { pid: process.pid }, name: 'oncely-gateway' },
    runtime.logDestination ?? pino.destination({ sync: false }),
  );
  const opened: OpenedStore | undefined = runtime.store ? undefined : await openStore(settings.store);
  const store = runtime.store ?? opened!.store;
  const metrics = new GatewayMetrics();
  const scopeHeaders = settings.scopeHeaders;

  const { onEvent: userOnEvent, ...engineOptions } = runtime.engineOptions ?? {};
  const engine = new GatewayEngine({
    store,
    methods: settings.methods,
    required: settings.requireKey,
    ttlMs: settings.ttlMs,
    lockTimeoutMs: settings.lockTimeoutMs,
    maxRequestBytes: settings.maxRequestBytes,
    maxResponseBytes: settings.maxResponseBytes,
    // S1: one credential's (or tenant's) keys never replay another's responses.
    scope: (request) => scopeOf(scopeHeaders.map((name) => request.header(name))),
    ...engineOptions,
    onEvent: (event) => {
      metrics.onEvent(event);
      // S3: the engine already cut the key to its first 8 characters; errors are logged by message only.
      const line = describeEvent(event);
      if (event.type === 'store_error') {
        logger.warn({ ...line, error: errorMessage(event.error), failOpen: event.failOpen }, 'store error');
      } else logger.info(line, event.type);
      userOnEvent?.(event);
    },
  });

  const proxy = createProxy({
    engine,
    upstream: settings.upstream,
    upstreamTimeoutMs: settings.upstreamTimeoutMs,
    onUpstream: (ms, result) => metrics.upstreamSeconds.observe({ result }, ms / 1_000),
    onPass: () => metrics.requests.inc({ outcome: 'passed' }),
  });

  const inFlight = new Set<Promise<void>>();
  let closing = false;
  const server = createServer((req, res) => {
    metrics.inFlight.inc();
    // Once shutting down, tell keep-alive clients to reconnect (to another instance).
    if (closing) res.setHeader('connection', 'close');
    const handled = proxy.handle(req, res).finally(() => {
      metrics.inFlight.dec();
      inFlight.delete(handled);
    });
    inFlight.add(handled);
  });
  server.on('clientError', (_error, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    else socket.destroy();
  });

  let admin: Awaited<ReturnType<typeof startAdmin>> | undefined;
  try {
    await listen(server, settings.listen.host, settings.listen.port);
    if (settings.admin) {
      admin = await startAdmin({
        ...settings.admin,
        store,
        metrics: async () => ({
          text: await metrics.registry.metrics(),
          contentType: metrics.registry.contentType,
        }),
      });
    }
  } catch (error) {
    server.close();
    await proxy.close();
    await opened?.close();
    throw error;
  }
  const { port } = server.address() as AddressInfo;
  const url = `http://${hostForUrl(settings.listen.host)}:${port}`;
  logger.info(
    { url, upstream: settings.upstream, store: opened?.kind ?? 'custom', admin: admin?.url },
    'listening',
  );

  let closed: Promise<void> | undefined;
  const close = () =>
    (closed ??= (async () => {
      closing = true;
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // In-flight requests finish and record their outcomes before the store goes away.
      while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
      server.closeAllConnections();
      await stopped;
      if (admin) {
        admin.server.closeAllConnections();
        await new Promise<void>((resolve) => admin!.server.close(() => resolve()));
      }
      await proxy.close();
      await opened?.close();
      logger.info('stopped');
      await new Promise<void>((resolve) => logger.flush(() => resolve()));
    })());

  return { url, adminUrl: admin?.url, store, metrics, logger, close };
}

function withDefaults(config: GatewayStartConfig): GatewayConfig & { upstream: string } {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    store: 'memory:',
    ttlMs: 86_400_000,
    lockTimeoutMs: 60_000,
    methods: ['POST', 'PATCH'],
    requireKey: false,
    scopeHeaders: ['authorization'],
    maxRequestBytes: 1_048_576,
    maxResponseBytes: 1_048_576,
    upstreamTimeoutMs: DEFAULT_UPSTREAM_TIMEOUT_MS,
    workers: 1,
    admin: undefined,
    logLevel: 'info',
    ...config,
  };
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function errorMessage(error: unknown): string | undefined {
  if (error === undefined) return undefined;
  return (error instanceof Error ? error.message : String(error)).split('\n')[0];
}
