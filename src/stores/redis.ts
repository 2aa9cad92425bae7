/**
 * @module oncely/redis: RedisStore, records shared by every instance through Redis (ioredis or node-redis, Cluster too).
 */
import { createHash } from 'node:crypto';
import type {
  AcquireInput,
  AcquireResult,
  HeaderMap,
  RecordView,
  Store,
  StoredResponse,
} from '../core/store.js';

/** A command argument as both clients accept it. */
type Argument = string | Buffer;

/** The part of an ioredis client (`Redis` or `Cluster`, v5/v6) that RedisStore uses. */
export interface IoredisClientLike {
  callBuffer(command: string, ...args: Argument[]): Promise<unknown>;
}

/** The part of a node-redis client or client pool (v4/v5, from `createClient`) that RedisStore uses. */
export interface NodeRedisClientLike {
  sendCommand(args: Argument[], options?: object): Promise<unknown>;
}

/** The part of a node-redis cluster (v4/v5, from `createCluster`) that RedisStore uses. */
export interface NodeRedisClusterLike {
  sendCommand(
    firstKey: Argument | undefined,
    isReadonly: boolean | undefined,
    args: Argument[],
    options?: object,
  ): Promise<unknown>;
  getSlotMaster(slot: number): unknown;
}

/** A Redis client RedisStore can use: ioredis or node-redis, single node or Cluster. */
export type RedisClientLike = IoredisClientLike | NodeRedisClientLike | NodeRedisClusterLike;

/** Default key prefix. The `v1` names the record layout, so a future layout can live beside it. */
export const DEFAULT_REDIS_PREFIX = 'oncely:v1:';

/** Options of {@link RedisStore}. */
export interface RedisStoreOptions {
  /**
   * A connected client you own: an ioredis `Redis`/`Cluster`, or a node-redis client, pool or cluster.
   * RedisStore sends every command through it, opens no connection of its own and never closes it.
   */
  client: RedisClientLike;
  /**
   * Prepended to every Redis key. Give each application (or test run) its own. Must not contain
   * `{` or `}`: the hash tag that places a record on its Cluster slot follows it.
   * @default 'oncely:v1:'
   */
  prefix?: string;
}

/**
 * One command seam over both clients: send a command whose first key is `key` and get the reply with
 * every bulk string as a Buffer (R5: bodies are bytes, not text).
 */
type Send = (key: string, args: Argument[]) => Promise<unknown>;

/** RESP_TYPES.BLOB_STRING of node-redis v5 (`$`), written out so this file never imports the driver. */
const RESP_BLOB_STRING = 36;

function commandSeam(client: unknown): Send {
  const candidate = client as Partial<IoredisClientLike & NodeRedisClientLike & NodeRedisClusterLike>;
  if (client === null || typeof client !== 'object') {
    throw new TypeError('RedisStore: options.client must be an ioredis or node-redis client');
  }
  if (typeof candidate.callBuffer === 'function') {
    // ioredis: callBuffer returns bulk strings as Buffers; Cluster routes by the key in the args.
    const io = client as IoredisClientLike;
    return (_key, [command, ...args]) => io.callBuffer(command as string, ...args);
  }
  if (typeof candidate.sendCommand === 'function') {
    // node-redis v5 reads `typeMapping`, v4 reads `returnBuffers`; each ignores the other's option.
    const options = { typeMapping: { [RESP_BLOB_STRING]: Buffer }, returnBuffers: true };
    if (typeof candidate.getSlotMaster === 'function') {
      const cluster = client as NodeRedisClusterLike;
      return (key, args) => cluster.sendCommand(key, false, args, options);
    }
    const single = client as NodeRedisClientLike;
    return (_key, args) => single.sendCommand(args, options);
  }
  throw new TypeError(
    'RedisStore: options.client must be an ioredis client (has callBuffer) or a node-redis client (has sendCommand)',
  );
}

/** A Lua script run by EVALSHA, with its source kept for the NOSCRIPT fallback. */
class Script {
  readonly sha: string;
  constructor(readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex');
  }
}

// A record is one key whose Redis expiry is its life: the lease while in flight (L3), ttlMs once
// completed (T1), so Redis forgets records by itself (T2). Its value changes type with its state:
// - in flight: a hash { f: fingerprint, t: fencing token, u: created at }, small enough for Redis's
//   compact listpack encoding;
// - completed: one string `<n>:<fingerprint (n bytes)><completed at>:<m>:<meta JSON (m bytes)><body>`,
//   meta being `[status, headers, bodyOmitted 0|1]`. A hash holding the headers JSON and the body would
//   exceed hash-max-listpack-value (64 bytes) and fall back to a hashtable nearly twice the size.
// Times are ms since epoch on the Redis clock, the one clock every app instance shares.
const NOW_MS = `local clock = redis.call('TIME')
local now = clock[1] .. string.format('%03d', math.floor(tonumber(clock[2]) / 1000))
`;

// The owning token of an in-flight record, or false (absent, expired or completed).
const OWNER = `local function owner()
  if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return false end
  return redis.call('HGET', KEYS[1], 't')
end
`;

// KEYS[1] record; ARGV fingerprint, token, leaseMs.
// L5: the check and the claim are one atomic script, so exactly one concurrent caller creates the record.
// L3: an expired lease is already gone (Redis dropped the key), so the caller takes over as a new first request.
const ACQUIRE = new Script(`local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' then return {'in-flight', redis.call('HGET', KEYS[1], 'f')} end
if kind == 'string' then return {'completed', redis.call('GET', KEYS[1])} end
if kind ~= 'none' then return redis.error_reply('oncely: ' .. KEYS[1] .. ' is a ' .. kind .. ', not a record') end
${NOW_MS}redis.call('HSET', KEYS[1], 'f', ARGV[1], 't', ARGV[2], 'u', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'acquired'}`);

// KEYS[1] record; ARGV token, ttlMs, meta JSON, body.
// L4: only the token that owns the in-flight record may complete it; a completed record has no token.
const COMPLETE = new Script(`${OWNER}if owner() ~= ARGV[1] then return 0 end
local f = redis.call('HGET', KEYS[1], 'f')
${NOW_MS}redis.call('SET', KEYS[1], #f .. ':' .. f .. now .. ':' .. #ARGV[3] .. ':' .. ARGV[3] .. ARGV[4], 'PX', ARGV[2])
return 1`);

// KEYS[1] record; ARGV token, leaseMs. L3 heartbeat, fenced by the token (L4).
const RENEW = new Script(`${OWNER}if owner() ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`);

// KEYS[1] record; ARGV token. Drops an in-flight record without an outcome, fenced by the token (L4).
const RELEASE = new Script(`${OWNER}if owner() ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1`);

// KEYS[1] record. The record with its remaining life and the Redis clock, read in one atomic step.
const GET = new Script(`local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'string' then return false end
local ttl = redis.call('PTTL', KEYS[1])
${NOW_MS}if kind == 'hash' then
  local r = redis.call('HMGET', KEYS[1], 'f', 'u')
  return {'in-flight', now, ttl, r[1], r[2]}
end
return {'completed', now, ttl, redis.call('GET', KEYS[1])}`);

/**
 * A store in Redis, shared by every process and machine that uses the same Redis (L5). Each operation
 * is one EVALSHA of a Lua script, so acquire, complete, renew, release and get are each one atomic round
 * trip. A record is one Redis key whose expiry is its lease or TTL: Redis deletes expired records
 * itself, so {@link RedisStore.sweep} has nothing to do (T2).
 *
 * Works with ioredis (v5, v6) and node-redis (v4, v5), single node or Cluster: a record lives under
 * `${prefix}{${SHA-256 of scope and key}}`, one key on one hash slot. Scope and key are used exactly
 * as given, never normalised (K5, S3), and never appear in Redis in the clear.
 *
 * @param options.client your connected client; never closed by the store
 * @param options.prefix key prefix; default `'oncely:v1:'`
 * @example
 * import { Redis } from 'ioredis';
 * import { RedisStore } from 'oncely/redis';
 * const store = new RedisStore({ client: new Redis(process.env.REDIS_URL!), prefix: 'payments:oncely:' });
 */
export class RedisStore implements Store {
  readonly #send: Send;
  readonly #prefix: string;
  #closed = false;

  constructor(options: RedisStoreOptions) {
    if (options === null || typeof options !== 'object' || options.client === undefined) {
      throw new TypeError('RedisStore: options.client is required (an ioredis or node-redis client)');
    }
    this.#send = commandSeam(options.client);
    const prefix = options.prefix ?? DEFAULT_REDIS_PREFIX;
    if (typeof prefix !== 'string' || /[{}]/.test(prefix)) {
      throw new TypeError('RedisStore: options.prefix must be a string without `{` or `}`');
    }
    this.#prefix = prefix;
  }

  /**
   * The Redis key of the record for (scope, key). The hash tag is a digest of both, so Cluster places
   * the record on one slot whatever braces scope or key contain, and distinct records spread over slots.
   */
  redisKey(scope: string, key: string): string {
    const digest = createHash('sha256')
      .update(JSON.stringify([scope, key]))
      .digest('base64url');
    return `${this.#prefix}{${digest}}`;
  }

  async acquire(input: AcquireInput): Promise<AcquireResult> {
    const reply = (await this.#run(ACQUIRE, this.redisKey(input.scope, input.key), [
      input.fingerprint,
      input.token,
      milliseconds(input.leaseMs, 'leaseMs'),
    ])) as unknown[];
    const state = text(reply[0]);
    if (state === 'acquired') return { state: 'acquired' };
    if (state === 'in-flight') return { state: 'in-flight', fingerprint: text(reply[1]) };
    const { fingerprint, response } = decodeCompleted(reply[1]);
    return { state: 'completed', fingerprint, response };
  }

  async complete(
    scope: string,
    key: string,
    token: string,
    response: StoredResponse,
    ttlMs: number,
  ): Promise<boolean> {
    const body = response.body;
    const reply = await this.#run(COMPLETE, this.redisKey(scope, key), [
      token,
      milliseconds(ttlMs, 'ttlMs'),
      JSON.stringify([response.status, response.headers, response.bodyOmitted ? 1 : 0]),
      // Only the bytes the view covers, without copying them (R5).
      Buffer.from(body.buffer, body.byteOffset, body.byteLength),
    ]);
    return reply === 1;
  }

  async renew(scope: string, key: string, token: string, leaseMs: number): Promise<boolean> {
    const reply = await this.#run(RENEW, this.redisKey(scope, key), [
      token,
      milliseconds(leaseMs, 'leaseMs'),
    ]);
    return reply === 1;
  }

  async release(scope: string, key: string, token: string): Promise<boolean> {
    return (await this.#run(RELEASE, this.redisKey(scope, key), [token])) === 1;
  }

  async get(scope: string, key: string): Promise<RecordView | undefined> {
    const reply = (await this.#run(GET, this.redisKey(scope, key), [])) as unknown[] | null;
    if (reply === null) return undefined;
    // Both times are Redis's clock, so expiresAt agrees with updatedAt whatever this machine's clock says.
    const expiresAt = Number(text(reply[1])) + Number(text(reply[2]));
    if (text(reply[0]) === 'in-flight') {
      const fingerprint = text(reply[3]);
      return { scope, key, state: 'in-flight', fingerprint, updatedAt: Number(text(reply[4])), expiresAt };
    }
    const { fingerprint, updatedAt, response } = decodeCompleted(reply[3]);
    return { scope, key, state: 'completed', fingerprint, updatedAt, expiresAt, response };
  }

  /**
   * T2: always 0. Every record carries a Redis expiry (PEXPIRE), so Redis removes expired records
   * itself — lazily when a key is touched and by its own active expiry cycle, whose cost follows the
   * number of keys that expire — and an expired record is absent to every script.
   */
  async sweep(_limit?: number): Promise<number> {
    return 0;
  }

  /** Stops this store; later operations reject. The client stays open: it is yours. Safe to call twice. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  /** EVALSHA, and on NOSCRIPT (script cache flushed, failover, new Cluster node) EVAL, which caches it again. */
  async #run(script: Script, key: string, args: Argument[]): Promise<unknown> {
    if (this.#closed) throw new Error('RedisStore is closed');
    try {
      return await this.#send(key, ['EVALSHA', script.sha, '1', key, ...args]);
    } catch (error) {
      // NOSCRIPT means nothing ran, so running the source is not a second execution.
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return this.#send(key, ['EVAL', script.source, '1', key, ...args]);
    }
  }
}

/** A duration as PEXPIRE takes it: a positive whole number of ms (PEXPIRE 0 would delete the record). */
function milliseconds(ms: number, name: string): string {
  if (!Number.isFinite(ms) || ms <= 0)
    throw new RangeError(`RedisStore: ${name} must be a positive number of ms`);
  return String(Math.ceil(ms));
}

function text(value: unknown): string {
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (typeof value === 'string' || typeof value === 'number') return String(value);
  throw new TypeError(`RedisStore: unexpected reply from Redis (${typeof value})`);
}

/** Reads a decimal length or time that ends at the next `:` from `at`; returns it and where it ended. */
function readNumber(blob: Buffer, at: number): [value: number, end: number] {
  const end = blob.indexOf(0x3a, at); // ':'
  if (end < 0) throw new TypeError('RedisStore: malformed completed record');
  return [Number(blob.toString('latin1', at, end)), end + 1];
}

/** Unpacks `<n>:<fingerprint><completed at>:<m>:<meta JSON><body>` (see the scripts above). */
function decodeCompleted(value: unknown): {
  fingerprint: string;
  updatedAt: number;
  response: StoredResponse;
} {
  if (!Buffer.isBuffer(value)) throw new TypeError('RedisStore: unexpected reply from Redis');
  const [fingerprintLength, fingerprintAt] = readNumber(value, 0);
  const timeAt = fingerprintAt + fingerprintLength;
  const fingerprint = value.toString('utf8', fingerprintAt, timeAt);
  const [updatedAt, lengthAt] = readNumber(value, timeAt);
  const [metaLength, metaAt] = readNumber(value, lengthAt);
  const bodyAt = metaAt + metaLength;
  const [status, headers, omitted] = JSON.parse(value.toString('utf8', metaAt, bodyAt)) as [
    number,
    HeaderMap,
    number,
  ];
  return {
    fingerprint,
    updatedAt,
    response: {
      status,
      headers,
      // A copy: the reply Buffer may share a larger pooled allocation.
      body: new Uint8Array(value.subarray(bodyAt)),
      bodyOmitted: omitted === 1,
    },
  };
}
