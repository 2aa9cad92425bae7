import { describe, expect, it } from 'vitest';
import { ConfigError, parseBytes, parseDuration, parseGatewayArgs } from './config.js';

const parse = (args: string[], env: Record<string, string> = {}) => parseGatewayArgs(args, env).config;
const failure = (args: string[], env: Record<string, string> = {}) => {
  try {
    parseGatewayArgs(args, env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error('expected a ConfigError');
};

describe('gateway config', () => {
  it('G1: defaults follow the SPEC (POST/PATCH, 24 h, 60 s, 1 MiB, Authorization scope, sqlite)', () => {
    const config = parse([]);
    expect(config).toMatchObject({
      upstream: undefined,
      listen: { host: '127.0.0.1', port: 8787 },
      store: 'sqlite:./oncely.db',
      ttlMs: 86_400_000,
      lockTimeoutMs: 60_000,
      methods: ['POST', 'PATCH'],
      requireKey: false,
      scopeHeaders: ['authorization'],
      maxRequestBytes: 1_048_576,
      maxResponseBytes: 1_048_576,
      upstreamTimeoutMs: 30_000,
      workers: 1,
      admin: undefined,
      logLevel: 'info',
    });
  });

  it('G1: every flag is parsed into the engine options it sets', () => {
    const config = parse([
      '--upstream=http://127.0.0.1:8080',
      '--listen',
      '0.0.0.0:9000',
      '--store',
      'redis://127.0.0.1:6379',
      '--ttl',
      '1h',
      '--lock-timeout',
      '500ms',
      '--methods',
      'post,put',
      '--require-key',
      '--scope-header',
      'Authorization',
      '--scope-header',
      'X-Tenant-Id',
      '--max-request-bytes',
      '64kb',
      '--max-response-bytes',
      '2mb',
      '--upstream-timeout',
      '5000',
      '--workers',
      '4',
      '--admin',
      ':9090',
      '--log-level',
      'WARN',
    ]);
    expect(config).toEqual({
      upstream: 'http://127.0.0.1:8080',
      listen: { host: '0.0.0.0', port: 9000 },
      store: 'redis://127.0.0.1:6379',
      ttlMs: 3_600_000,
      lockTimeoutMs: 500,
      methods: ['POST', 'PUT'],
      requireKey: true,
      scopeHeaders: ['authorization', 'x-tenant-id'],
      maxRequestBytes: 65_536,
      maxResponseBytes: 2_097_152,
      upstreamTimeoutMs: 5_000,
      workers: 4,
      admin: { host: '127.0.0.1', port: 9090 },
      logLevel: 'warn',
    });
  });

  it('G1: ONCELY_* environment variables configure the gateway, and a flag wins over them', () => {
    const env = {
      ONCELY_UPSTREAM: 'http://10.0.0.1:80',
      ONCELY_TTL: '2h',
      ONCELY_REQUIRE_KEY: 'true',
      ONCELY_SCOPE_HEADER: 'X-Tenant-Id, Authorization',
      ONCELY_STORE: 'memory:',
    };
    expect(parse([], env)).toMatchObject({
      upstream: 'http://10.0.0.1',
      ttlMs: 7_200_000,
      requireKey: true,
      scopeHeaders: ['x-tenant-id', 'authorization'],
      store: 'memory:',
    });
    expect(parse(['--ttl', '5m', '--upstream', 'http://127.0.0.1:1'], env)).toMatchObject({
      ttlMs: 300_000,
      upstream: 'http://127.0.0.1:1',
    });
  });

  it('G1: durations and sizes accept units and bare numbers', () => {
    expect(parseDuration('24h', 'x')).toBe(86_400_000);
    expect(parseDuration('60s', 'x')).toBe(60_000);
    expect(parseDuration('250', 'x')).toBe(250);
    expect(parseDuration('1.5s', 'x')).toBe(1_500);
    expect(parseBytes('1mb', 'x')).toBe(1_048_576);
    expect(parseBytes('512KB', 'x')).toBe(524_288);
    expect(parseBytes('100', 'x')).toBe(100);
  });

  it('G1: each mistake is one line naming the flag or variable', () => {
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [['--ttl', 'soon'], {}, /^--ttl must be a positive duration/],
      [['--lock-timeout', '0'], {}, /^--lock-timeout must be a positive duration/],
      [['--upstream', 'ftp://x'], {}, /^--upstream must be an http/],
      [['--upstream', 'http://x/api'], {}, /^--upstream must be an origin without a path/],
      [['--listen', 'localhost'], {}, /^--listen must be HOST:PORT/],
      [['--store', 'mysql://x'], {}, /^--store must be sqlite:PATH/],
      [['--methods', 'POST;GET'], {}, /^--methods must be a comma-separated list/],
      [['--max-request-bytes=-1'], {}, /^--max-request-bytes must be a positive size/],
      [['--max-request-bytes', '-1'], {}, /^--max-request-bytes needs a value/],
      [['--workers', '0'], {}, /^--workers must be a whole number/],
      [['--workers', '2', '--store', 'memory:'], {}, /^--workers above 1 needs a shared store/],
      [['--log-level', 'loud'], {}, /^--log-level must be one of/],
      [['--frobnicate'], {}, /^unknown flag --frobnicate/],
      [['--upstream'], {}, /^--upstream needs a value/],
      [[], { ONCELY_TTL: 'forever' }, /^ONCELY_TTL must be a positive duration/],
      [[], { ONCELY_REQUIRE_KEY: 'maybe' }, /^ONCELY_REQUIRE_KEY must be true or false/],
    ];
    for (const [args, env, pattern] of cases) {
      const message = failure(args, env);
      expect(message).toMatch(pattern);
      expect(message).not.toContain('\n');
    }
  });

  it('G1: --help is reported, not treated as an error', () => {
    expect(parseGatewayArgs(['--help']).help).toBe(true);
    expect(parseGatewayArgs(['-h']).help).toBe(true);
  });
});
