#!/usr/bin/env node
/**
 * @module The `oncely` command: `oncely gateway`, `oncely inspect`, `oncely sweep`.
 */
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { AggregatorRegistry } from 'prom-client';
import { recordJson, scopeOf, startAdmin } from './admin.js';
import {
  ConfigError,
  DEFAULT_LISTEN,
  DEFAULT_STORE,
  envName,
  type GatewayConfig,
  parseGatewayArgs,
} from './config.js';
import { demoInstructions, startDemoUpstream } from './demo.js';
import { startGateway } from './server.js';
import { openStore, StoreOpenError } from './stores.js';

const MAIN_HELP = `oncely: make any HTTP API safe to retry with the Idempotency-Key contract.

Usage:
  oncely gateway [flags]                 run the idempotency reverse proxy (oncely gateway --help)
  oncely inspect KEY [--store URL] [--scope S | --authorization VALUE]
                                         show the record of one key (state, status, times; no body)
  oncely sweep [--store URL]             delete expired records now
  oncely --help                          this text

Examples:
  oncely gateway                                     # try it: a demo payments API behind the gateway
  oncely gateway --upstream http://127.0.0.1:8080    # protect your API, records in ./oncely.db
  oncely inspect 8e03978e-40d5-43e8 --authorization 'Bearer sk_test_123'

Docs: docs/gateway.md
`;

const GATEWAY_HELP = `oncely gateway: a reverse proxy that applies the Idempotency-Key contract in front of any HTTP API.

POST and PATCH requests carrying an Idempotency-Key run once upstream; retries get the recorded
response (Idempotent-Replayed: true), a duplicate in flight gets 409, a key reused with another
request gets 422. Everything else is streamed through untouched.

Usage: oncely gateway [flags]

Flags (each also read from the environment variable shown; a flag wins):
  --upstream URL            the API to protect, e.g. http://127.0.0.1:8080          ONCELY_UPSTREAM
                            (omitted: start a demo payments API and print curl commands to try)
  --listen HOST:PORT        where to listen (default ${DEFAULT_LISTEN})                 ONCELY_LISTEN
  --store URL               where records live (default ${DEFAULT_STORE})          ONCELY_STORE
                              sqlite:PATH        one machine, many processes
                              redis://HOST:6379  many machines (?prefix=app: for the key prefix)
                              postgres://USER@HOST/DB  many machines (creates its table; ?schema=NAME)
                              memory:            one process, lost on restart
  --ttl DURATION            keep completed records this long (default 24h)       ONCELY_TTL
  --lock-timeout DURATION   lease of a request in flight, renewed while it runs (default 60s)
                                                                                  ONCELY_LOCK_TIMEOUT
  --methods LIST            methods where keys take effect (default POST,PATCH)   ONCELY_METHODS
  --require-key             answer 400 to those methods when the key is missing   ONCELY_REQUIRE_KEY
  --scope-header NAME       headers whose values namespace keys; repeat for more  ONCELY_SCOPE_HEADER
                            (default Authorization; env: comma-separated)
  --max-request-bytes SIZE  largest keyed request body, else 413 (default 1mb)    ONCELY_MAX_REQUEST_BYTES
  --max-response-bytes SIZE largest response body recorded; larger ones are delivered
                            and replayed without body (default 1mb)               ONCELY_MAX_RESPONSE_BYTES
  --upstream-timeout DURATION  wait this long for the upstream's headers, and between body
                            chunks; then 504, recorded (default 30s)              ONCELY_UPSTREAM_TIMEOUT
  --workers N               processes sharing the port and the store (default 1)  ONCELY_WORKERS
  --admin HOST:PORT         serve /healthz, /metrics, /records/:key here (default off) ONCELY_ADMIN
  --log-level LEVEL         fatal, error, warn, info, debug, trace, silent (default info)
                                                                                  ONCELY_LOG_LEVEL
  -h, --help                this text

Durations: 500ms, 60s, 5m, 24h (or milliseconds). Sizes: 65536, 512kb, 1mb.

Examples:
  oncely gateway
  oncely gateway --upstream http://127.0.0.1:8080 --listen 0.0.0.0:8787 --admin 127.0.0.1:9090
  oncely gateway --upstream http://api:8080 --store redis://redis:6379 --workers 4
  ONCELY_UPSTREAM=http://api:8080 ONCELY_STORE=postgres://oncely@db/app oncely gateway --scope-header X-Tenant-Id
`;

/** Print one line and exit non-zero: every startup failure ends here. */
function die(message: string, code = 1): never {
  process.stderr.write(`oncely: ${message}\n`);
  process.exit(code);
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(MAIN_HELP);
    return;
  }
  if (command === 'gateway') return gateway(rest);
  if (command === 'inspect') return inspect(rest);
  if (command === 'sweep') return sweep(rest);
  die(`unknown command "${command}" (try oncely --help)`, 2);
}

async function gateway(args: string[]): Promise<void> {
  let config: GatewayConfig;
  try {
    const parsed = parseGatewayArgs(args, process.env);
    if (parsed.help) {
      process.stdout.write(GATEWAY_HELP);
      return;
    }
    config = parsed.config;
  } catch (error) {
    if (error instanceof ConfigError) die(error.message, 2);
    throw error;
  }
  if (config.workers > 1) return cluster.isPrimary ? primary(config) : worker(config);
  return single(config);
}

/** One process: demo upstream if needed, the gateway, signals. */
async function single(config: GatewayConfig): Promise<void> {
  const demo = config.upstream === undefined ? await startDemoUpstream() : undefined;
  const running = await startGateway({ ...config, upstream: config.upstream ?? demo!.url }).catch(
    startupFailed,
  );
  if (demo) process.stderr.write(`${demoInstructions(running.url)}\n`);
  onSignals(async () => {
    await running.close();
    await demo?.close();
  });
}

/** `--workers N`: the primary forks workers that share the port (node:cluster) and the store. */
async function primary(config: GatewayConfig): Promise<void> {
  const demo = config.upstream === undefined ? await startDemoUpstream() : undefined;
  // Workers re-read argv and the environment; the demo's address reaches them through the env.
  const env = demo ? { [envName('upstream')]: demo.url } : {};
  let stopping = false;
  let ready = 0;
  const fork = () => cluster.fork(env);
  cluster.on('message', (_worker, message: { oncely?: string; url?: string }) => {
    if (message?.oncely !== 'listening') return;
    ready += 1;
    if (ready !== config.workers) return;
    const adminNote = admin ? `, admin on ${admin.url}` : '';
    process.stderr.write(`oncely: ${config.workers} workers listening on ${message.url}${adminNote}\n`);
    if (demo) process.stderr.write(`${demoInstructions(message.url!)}\n`);
  });
  cluster.on('exit', (worker, code) => {
    if (stopping) return;
    if (ready < config.workers) die(`a worker failed to start (exit code ${code}); see its error above`);
    process.stderr.write(`oncely: worker ${worker.process.pid} exited with code ${code}; starting another\n`);
    fork();
  });
  let admin: Awaited<ReturnType<typeof startAdmin>> | undefined;
  let closeStore: (() => Promise<void>) | undefined;
  if (config.admin) {
    const opened = await openStore(config.store).catch(startupFailed);
    closeStore = opened.close;
    const aggregator = new AggregatorRegistry();
    admin = await startAdmin({
      ...config.admin,
      store: opened.store,
      metrics: async () => ({ text: await aggregator.clusterMetrics(), contentType: aggregator.contentType }),
    }).catch(startupFailed);
  }
  for (let i = 0; i < config.workers; i++) fork();

  onSignals(async () => {
    stopping = true;
    const exits = Object.values(cluster.workers ?? {}).map(
      (worker) =>
        new Promise<void>((resolve) => {
          if (!worker || worker.isDead()) return resolve();
          worker.once('exit', () => resolve());
          worker.process.kill('SIGTERM');
        }),
    );
    await Promise.all(exits);
    if (admin) await new Promise<void>((resolve) => admin!.server.close(() => resolve()));
    await closeStore?.();
    await demo?.close();
  });
}

async function worker(config: GatewayConfig): Promise<void> {
  const upstream = config.upstream ?? die('worker started without an upstream');
  // The primary serves the admin listener and aggregates every worker's metrics.
  const running = await startGateway({ ...config, upstream, admin: undefined }).catch(startupFailed);
  // Constructing an AggregatorRegistry is what makes a worker answer the primary's metric requests.
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([running.metrics.registry]);
  process.send?.({ oncely: 'listening', url: running.url });
  onSignals(() => running.close());
  // The primary is gone (crashed or killed): finish what is in flight and leave too.
  process.once('disconnect', () => {
    running.close().then(() => process.exit(0));
  });
}

/** SIGTERM/SIGINT: stop gracefully and exit 0; a second signal exits at once. */
function onSignals(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stderr.write(`oncely: ${signal}: finishing in-flight requests, then exiting\n`);
    stop().then(
      () => process.exit(0),
      (error: unknown) => die(`shutdown failed: ${error instanceof Error ? error.message : String(error)}`),
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

function startupFailed(error: unknown): never {
  if (error instanceof StoreOpenError || error instanceof ConfigError) die(error.message);
  const code = (error as { code?: string })?.code;
  if (code === 'EADDRINUSE')
    die(`cannot listen: address in use (${(error as Error).message.split(' ').pop()})`);
  if (code === 'EACCES' || code === 'EADDRNOTAVAIL') die(`cannot listen: ${(error as Error).message}`);
  die(error instanceof Error ? error.message.split('\n')[0]! : String(error));
}

const STORE_FLAGS = {
  store: { type: 'string' },
  scope: { type: 'string' },
  authorization: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseStoreCommand(args: string[], usage: string, positionals: number) {
  try {
    const parsed = parseArgs({ args, options: STORE_FLAGS, allowPositionals: true, strict: true });
    if (parsed.values.help) {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    }
    if (parsed.positionals.length !== positionals) throw new Error(`expected: ${usage}`);
    return parsed;
  } catch (error) {
    die(
      (error instanceof Error ? error.message : String(error))
        .split('\n')[0]!
        .replace(/^Unknown option/, 'unknown flag'),
      2,
    );
  }
}

async function inspect(args: string[]): Promise<void> {
  const usage = 'oncely inspect KEY [--store URL] [--scope SCOPE | --authorization VALUE]';
  const { values, positionals } = parseStoreCommand(args, usage, 1);
  if (values.scope !== undefined && values.authorization !== undefined) {
    die('give --scope or --authorization, not both', 2);
  }
  const { store, close } = await openStore(
    values.store ?? process.env[envName('store')] ?? DEFAULT_STORE,
  ).catch(startupFailed);
  try {
    const scope = values.scope ?? scopeOf([values.authorization]);
    const record = await store.get(scope, positionals[0]!);
    if (!record) {
      process.stderr.write('oncely: no live record for this key in this scope\n');
      process.exitCode = 1;
    } else process.stdout.write(`${JSON.stringify(recordJson(record), null, 2)}\n`);
  } finally {
    await close();
  }
}

async function sweep(args: string[]): Promise<void> {
  const { values } = parseStoreCommand(args, 'oncely sweep [--store URL]', 0);
  const { store, close } = await openStore(
    values.store ?? process.env[envName('store')] ?? DEFAULT_STORE,
  ).catch(startupFailed);
  try {
    let removed = 0;
    const batch = 1_000;
    for (;;) {
      const count = await store.sweep(batch);
      removed += count;
      if (count < batch) break;
    }
    process.stdout.write(`removed ${removed} expired record${removed === 1 ? '' : 's'}\n`);
  } finally {
    await close();
  }
}

main(process.argv.slice(2)).catch((error: unknown) => startupFailed(error));
