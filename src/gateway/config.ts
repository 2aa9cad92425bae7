/**
 * @module Gateway configuration: command-line flags and `ONCELY_*` environment variables, parsed and
 * validated in one pure step so every mistake is reported at startup as one line.
 */
import { parseArgs } from 'node:util';

/** Everything one gateway process needs. Durations are milliseconds, sizes bytes. */
export interface GatewayConfig {
  /** The API to protect, e.g. `http://127.0.0.1:8080`. Undefined starts the bundled demo upstream. */
  upstream: string | undefined;
  /** Where the proxy listens. Port 0 picks a free port. */
  listen: { host: string; port: number };
  /** `sqlite:PATH`, `memory:`, `redis://…` or `postgres://…`. */
  store: string;
  /** T1: how long completed records are kept. */
  ttlMs: number;
  /** L3: the in-flight lease. */
  lockTimeoutMs: number;
  /** M1: methods on which keys take effect (upper case). */
  methods: string[];
  /** M3: answer 400 to keyed methods without a key. */
  requireKey: boolean;
  /** S1: lower-case header names whose values make the scope. */
  scopeHeaders: string[];
  /** R7 */
  maxRequestBytes: number;
  /** R7 */
  maxResponseBytes: number;
  /** G2: how long the upstream may take to answer a request it was sent. */
  upstreamTimeoutMs: number;
  /** Worker processes (node:cluster); 1 runs in this process. */
  workers: number;
  /** The operations listener (/healthz, /metrics, /records/:key); undefined = off. */
  admin: { host: string; port: number } | undefined;
  logLevel: LogLevel;
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export const DEFAULT_LISTEN = '127.0.0.1:8787';
export const DEFAULT_STORE = 'sqlite:./oncely.db';
export const DEFAULT_UPSTREAM_TIMEOUT_MS = 30_000;
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** A configuration mistake; `message` is the one line the CLI prints. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** The gateway flags, each also read from `ONCELY_<NAME>` (upper snake case); a flag wins over the env. */
export const GATEWAY_FLAGS = {
  upstream: { type: 'string' },
  listen: { type: 'string' },
  store: { type: 'string' },
  ttl: { type: 'string' },
  'lock-timeout': { type: 'string' },
  methods: { type: 'string' },
  'require-key': { type: 'boolean' },
  'scope-header': { type: 'string', multiple: true },
  'max-request-bytes': { type: 'string' },
  'max-response-bytes': { type: 'string' },
  'upstream-timeout': { type: 'string' },
  workers: { type: 'string' },
  admin: { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type FlagName = keyof typeof GATEWAY_FLAGS;
type Env = Record<string, string | undefined>;

/** `lock-timeout` → `ONCELY_LOCK_TIMEOUT`. */
export function envName(flag: string): string {
  return `ONCELY_${flag.toUpperCase().replaceAll('-', '_')}`;
}

/**
 * Parse `oncely gateway` arguments (after the command word) and the environment into a config.
 * Throws {@link ConfigError} with a one-line message naming the flag.
 *
 * @param args command-line arguments, e.g. `['--upstream', 'http://127.0.0.1:8080']`
 * @param env environment variables; defaults to none (pass `process.env` from the CLI)
 * @example
 * const { config } = parseGatewayArgs(['--upstream', 'http://127.0.0.1:8080', '--ttl', '1h']);
 * config.ttlMs; // 3_600_000
 */
export function parseGatewayArgs(
  args: readonly string[],
  env: Env = {},
): { config: GatewayConfig; help: boolean } {
  let values: Partial<Record<FlagName, string | boolean | string[]>>;
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: GATEWAY_FLAGS,
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new ConfigError(cleanParseError(error));
  }
  const get = (
    flag: Exclude<FlagName, 'scope-header' | 'require-key' | 'help'>,
  ): [string, string] | undefined => {
    const value = values[flag];
    if (typeof value === 'string') return [value, `--${flag}`];
    const fromEnv = env[envName(flag)];
    return fromEnv === undefined || fromEnv === '' ? undefined : [fromEnv, envName(flag)];
  };

  const upstream = get('upstream');
  const scopeFlag = values['scope-header'] as string[] | undefined;
  const scopeEnv = env[envName('scope-header')];
  const requireEnv = env[envName('require-key')];
  const requireKey =
    values['require-key'] === true ||
    (values['require-key'] === undefined &&
      requireEnv !== undefined &&
      parseBoolean(requireEnv, envName('require-key')));
  const methods = get('methods');
  const admin = get('admin');
  const logLevel = get('log-level');

  const config: GatewayConfig = {
    upstream: upstream && parseUpstream(...upstream),
    listen: parseAddress(...(get('listen') ?? [DEFAULT_LISTEN, '--listen'])),
    store: parseStoreUrl(...(get('store') ?? [DEFAULT_STORE, '--store'])),
    ttlMs: parseDuration(...(get('ttl') ?? ['24h', '--ttl'])),
    lockTimeoutMs: parseDuration(...(get('lock-timeout') ?? ['60s', '--lock-timeout'])),
    methods: methods ? parseMethods(...methods) : ['POST', 'PATCH'],
    requireKey,
    scopeHeaders: parseScopeHeaders(scopeFlag ?? (scopeEnv ? scopeEnv.split(',') : ['authorization'])),
    maxRequestBytes: parseBytes(...(get('max-request-bytes') ?? ['1mb', '--max-request-bytes'])),
    maxResponseBytes: parseBytes(...(get('max-response-bytes') ?? ['1mb', '--max-response-bytes'])),
    upstreamTimeoutMs: parseDuration(...(get('upstream-timeout') ?? ['30s', '--upstream-timeout'])),
    workers: parseWorkers(...(get('workers') ?? ['1', '--workers'])),
    admin: admin && parseAddress(...admin),
    logLevel: logLevel ? parseLogLevel(...logLevel) : 'info',
  };
  if (config.workers > 1 && config.store === 'memory:') {
    throw new ConfigError(
      '--workers above 1 needs a shared store: use sqlite:PATH, redis://… or postgres://…',
    );
  }
  return { config, help: values.help === true };
}

/**
 * A duration: `500ms`, `60s`, `5m`, `24h`, `7d`, or a bare number of milliseconds.
 * @example parseDuration('24h', '--ttl') // 86_400_000
 */
export function parseDuration(text: string, name: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/i.exec(text);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
    (match?.[2] ?? 'ms').toLowerCase() as 'ms'
  ];
  const ms = match ? Math.round(Number(match[1]) * unit) : Number.NaN;
  if (!Number.isSafeInteger(ms) || ms <= 0) {
    throw new ConfigError(
      `${name} must be a positive duration such as 500ms, 60s, 5m or 24h (got "${text}")`,
    );
  }
  return ms;
}

/**
 * A size: `1048576`, `512kb`, `1mb`, `2gb` (binary multiples).
 * @example parseBytes('1mb', '--max-request-bytes') // 1_048_576
 */
export function parseBytes(text: string, name: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|k|mb|m|gb|g)?\s*$/i.exec(text);
  const unit = match?.[2]?.[0]?.toLowerCase();
  const factor = unit === 'k' ? 1_024 : unit === 'm' ? 1_048_576 : unit === 'g' ? 1_073_741_824 : 1;
  const bytes = match ? Math.floor(Number(match[1]) * factor) : Number.NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new ConfigError(`${name} must be a positive size such as 65536, 512kb or 1mb (got "${text}")`);
  }
  return bytes;
}

/** `HOST:PORT`, `:PORT`, `PORT` or `[::1]:PORT`. */
export function parseAddress(text: string, name: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*))?:?(\d+)$/.exec(text.trim());
  const port = match ? Number(match[3]) : Number.NaN;
  if (!match || !Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new ConfigError(
      `${name} must be HOST:PORT, such as 127.0.0.1:8787 or 0.0.0.0:8080 (got "${text}")`,
    );
  }
  return { host: match[1] ?? (match[2] || '127.0.0.1'), port };
}

function parseUpstream(text: string, name: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(
      `${name} must be an http:// or https:// URL, such as http://127.0.0.1:8080 (got "${text}")`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(`${name} must be an http:// or https:// URL (got "${text}")`);
  }
  if (url.pathname !== '/' || url.search !== '') {
    throw new ConfigError(
      `${name} must be an origin without a path, such as http://127.0.0.1:8080 (got "${text}")`,
    );
  }
  return url.origin;
}

function parseStoreUrl(text: string, name: string): string {
  if (text === 'memory:' || text === 'memory') return 'memory:';
  if (/^sqlite:.+/.test(text) || /^rediss?:\/\/./.test(text) || /^postgres(ql)?:\/\/./.test(text))
    return text;
  throw new ConfigError(
    `${name} must be sqlite:PATH, memory:, redis://HOST:PORT or postgres://USER@HOST/DB (got "${text}")`,
  );
}

function parseMethods(text: string, name: string): string[] {
  const methods = text
    .split(',')
    .map((method) => method.trim().toUpperCase())
    .filter(Boolean);
  if (methods.length === 0 || methods.some((method) => !/^[A-Z]+$/.test(method))) {
    throw new ConfigError(
      `${name} must be a comma-separated list of HTTP methods, such as POST,PATCH (got "${text}")`,
    );
  }
  return [...new Set(methods)];
}

function parseScopeHeaders(names: readonly string[]): string[] {
  const headers = names.map((header) => header.trim().toLowerCase()).filter(Boolean);
  if (headers.length === 0 || headers.some((header) => !/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(header))) {
    throw new ConfigError(`--scope-header must name HTTP headers, such as Authorization or X-Tenant-Id`);
  }
  return [...new Set(headers)];
}

function parseWorkers(text: string, name: string): number {
  const workers = /^\d+$/.test(text.trim()) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(workers) || workers < 1 || workers > 256) {
    throw new ConfigError(`${name} must be a whole number of processes from 1 to 256 (got "${text}")`);
  }
  return workers;
}

function parseLogLevel(text: string, name: string): LogLevel {
  const level = text.trim().toLowerCase() as LogLevel;
  if (!LOG_LEVELS.includes(level)) {
    throw new ConfigError(`${name} must be one of ${LOG_LEVELS.join(', ')} (got "${text}")`);
  }
  return level;
}

function parseBoolean(text: string, name: string): boolean {
  if (/^(1|true|yes|on)$/i.test(text)) return true;
  if (/^(0|false|no|off)$/i.test(text)) return false;
  throw new ConfigError(`${name} must be true or false (got "${text}")`);
}

/** node's parseArgs messages carry a hint about '--' that does not apply to us; keep the first sentence. */
function cleanParseError(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const unknown = /Unknown option '([^']+)'/.exec(message);
  if (unknown) return `unknown flag ${unknown[1]} (see oncely gateway --help)`;
  const missing = /Option '(?:-\w, )?(--[\w-]+) <value>' argument missing/.exec(message);
  if (missing) return `${missing[1]} needs a value (see oncely gateway --help)`;
  const ambiguous = /Option '(--[\w-]+)' argument is ambiguous/.exec(message);
  if (ambiguous)
    return `${ambiguous[1]} needs a value; write ${ambiguous[1]}=VALUE for one starting with "-"`;
  return `${message.split('\n')[0]} (see oncely gateway --help)`;
}
