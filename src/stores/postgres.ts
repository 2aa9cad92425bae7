/**
 * @module oncely/postgres: PostgresStore, records in PostgreSQL shared by every instance (`pg` or postgres.js).
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

/** The table name's version suffix: a change of layout gets a new table, never an in-place rewrite. */
export const POSTGRES_TABLE_VERSION = 1;

const DEFAULT_TABLE = `oncely_records_v${POSTGRES_TABLE_VERSION}`;
const DEFAULT_SWEEP_INTERVAL_MS = 60_000;
const DEFAULT_SWEEP_BATCH_SIZE = 1_000;
/** Re-runs of the acquire statement when it raced a concurrent insert it could not see (see #acquireOnce). */
const ACQUIRE_ATTEMPTS = 5;
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** PostgreSQL truncates identifiers beyond 63 bytes; the index name adds `_expires_at_idx`. */
const MAX_TABLE_LENGTH = 63 - '_expires_at_idx'.length;

/**
 * What `PostgresStore` needs from a `pg` `Pool`, `Client` or `PoolClient` (node-postgres 8).
 * Typed structurally so this module's types never require `@types/pg`.
 */
export interface PgQueryable {
  query(
    config: { text: string; values?: unknown[]; name?: string },
    // biome-ignore lint/suspicious/noExplicitAny: node-postgres types rows as any
  ): Promise<{ rows: any[] }>;
}

/** What `PostgresStore` needs from a postgres.js `sql` instance (`postgres()`, v3 or v4). */
export interface PostgresJsSql {
  unsafe(
    text: string,
    // biome-ignore lint/suspicious/noExplicitAny: postgres.js parameter and row types
    parameters?: any[],
    options?: { prepare?: boolean },
    // biome-ignore lint/suspicious/noExplicitAny: postgres.js parameter and row types
  ): PromiseLike<readonly any[]>;
}

/** Options of {@link PostgresStore}. Pass exactly one of `pool` and `sql`. */
export interface PostgresStoreOptions {
  /** A node-postgres `Pool` (or `Client`). The store never ends it. */
  pool?: PgQueryable;
  /** A postgres.js `sql` instance. The store never ends it. */
  sql?: PostgresJsSql;
  /** The table holding records. @default 'oncely_records_v1' */
  table?: string;
  /** The schema of the table; it must already exist. @default the connection's `search_path` */
  schema?: string;
  /**
   * How often this instance deletes expired records, in ms; `0` turns the timer off (call `sweep()`
   * yourself). The timer never keeps the process alive. @default 60_000
   */
  sweepIntervalMs?: number;
  /** Rows deleted per statement by `sweep()`, so no statement holds many row locks. @default 1_000 */
  sweepBatchSize?: number;
  /**
   * Use named prepared statements (`pg`) / `prepare: true` (postgres.js). Turn off behind a pooler in
   * transaction mode that does not track prepared statements. @default true
   */
  prepare?: boolean;
  /** Told about errors of the background sweep (the next tick tries again). @default ignore them */
  onError?: (error: unknown) => void;
}

/** Options of {@link postgresMigrationSql}. */
export interface PostgresMigrationOptions {
  /** @default 'oncely_records_v1' */
  table?: string;
  /** @default unqualified (the `search_path`) */
  schema?: string;
}

/**
 * The DDL that creates oncely's table and its expiry index, for teams that run their own migrations.
 * Idempotent (`IF NOT EXISTS`); `PostgresStore.migrate()` runs exactly this.
 *
 * @param options `table` (default `oncely_records_v1`) and `schema` (default: the `search_path`)
 * @example
 * import { postgresMigrationSql } from 'oncely/postgres';
 * writeFileSync('migrations/0042_oncely.sql', postgresMigrationSql({ schema: 'app' }));
 */
export function postgresMigrationSql(options: PostgresMigrationOptions = {}): string {
  const { qualified, indexName } = names('postgresMigrationSql', options.table, options.schema);
  // scope/key use the "C" collation: byte-wise equality (K5, S3) and the cheapest comparisons.
  return `CREATE TABLE IF NOT EXISTS ${qualified} (
  scope        text COLLATE "C" NOT NULL,
  key          text COLLATE "C" NOT NULL,
  fingerprint  text NOT NULL,
  token        text,
  state        text NOT NULL CHECK (state IN ('in-flight', 'completed')),
  status       integer,
  headers      jsonb,
  body         bytea,
  body_omitted boolean NOT NULL DEFAULT false,
  created_at   timestamptz NOT NULL,
  updated_at   timestamptz NOT NULL,
  expires_at   timestamptz NOT NULL,
  PRIMARY KEY (scope, key),
  CHECK ((state = 'in-flight') = (token IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS ${quote(indexName)} ON ${qualified} (expires_at);
`;
}

/** The DDL of the default table (`oncely_records_v1` on the `search_path`). */
export const POSTGRES_MIGRATION_SQL: string = postgresMigrationSql();

/** One parameterised statement in, rows out: the only thing the store logic knows about a client. */
// biome-ignore lint/suspicious/noExplicitAny: rows as the driver returns them
type Query = (text: string, values: unknown[]) => Promise<readonly any[]>;

/**
 * A store in PostgreSQL: every instance of the API that shares the database shares the records, the
 * locks and the fencing (L5). Each operation is one SQL statement, and every time comparison uses the
 * database's clock, never this machine's. Create the table once with {@link PostgresStore.migrate} or
 * {@link postgresMigrationSql}.
 *
 * @param options `pool` (node-postgres) or `sql` (postgres.js); `table` (default `oncely_records_v1`),
 *   `schema`, `sweepIntervalMs` (default 60 000, 0 = off), `sweepBatchSize` (default 1 000),
 *   `prepare` (default true), `onError`
 * @example
 * import pg from 'pg';
 * import { PostgresStore } from 'oncely/postgres';
 * const store = new PostgresStore({ pool: new pg.Pool({ connectionString: process.env.DATABASE_URL }) });
 * await store.migrate();
 */
export class PostgresStore implements Store {
  readonly #query: Query;
  readonly #migration: string;
  readonly #lockName: string;
  readonly #sweepBatchSize: number;
  readonly #onError: (error: unknown) => void;
  readonly #sql: Statements;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: PostgresStoreOptions) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError('PostgresStore: options must be an object with `pool` or `sql`');
    }
    const { pool, sql } = options;
    if ((pool === undefined) === (sql === undefined)) {
      throw new TypeError(
        'PostgresStore: pass exactly one of options.pool (pg) and options.sql (postgres.js)',
      );
    }
    if (pool !== undefined && typeof pool.query !== 'function') {
      throw new TypeError('PostgresStore: options.pool must be a pg Pool or Client (it has no query method)');
    }
    if (sql !== undefined && typeof sql.unsafe !== 'function') {
      throw new TypeError(
        'PostgresStore: options.sql must be a postgres.js sql instance (it has no unsafe method)',
      );
    }
    const interval = options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
    if (!Number.isSafeInteger(interval) || interval < 0) {
      throw new RangeError(
        'PostgresStore: options.sweepIntervalMs must be 0 or a positive integer of milliseconds',
      );
    }
    const batch = options.sweepBatchSize ?? DEFAULT_SWEEP_BATCH_SIZE;
    if (!Number.isSafeInteger(batch) || batch <= 0) {
      throw new RangeError('PostgresStore: options.sweepBatchSize must be a positive integer');
    }
    if (options.onError !== undefined && typeof options.onError !== 'function') {
      throw new TypeError('PostgresStore: options.onError must be a function');
    }
    const prepare = options.prepare ?? true;
    if (typeof prepare !== 'boolean') throw new TypeError('PostgresStore: options.prepare must be a boolean');

    const { qualified } = names('PostgresStore', options.table, options.schema);
    this.#migration = postgresMigrationSql({ table: options.table, schema: options.schema });
    this.#lockName = `oncely:${qualified}`;
    this.#sql = statements(qualified);
    this.#sweepBatchSize = batch;
    this.#onError = options.onError ?? (() => {});
    this.#query = pool !== undefined ? pgQuery(pool, prepare) : postgresJsQuery(sql!, prepare);
    if (interval > 0) {
      this.#timer = setInterval(() => {
        this.sweep().catch((error) => this.#onError(error));
      }, interval);
      this.#timer.unref();
    }
  }

  /**
   * Create the table and its index if they do not exist (idempotent). Concurrent calls from several
   * instances are serialised by a transaction-scoped advisory lock. The schema must exist.
   */
  async migrate(): Promise<void> {
    // No parameters: both drivers send this as one simple-protocol message, which PostgreSQL runs as
    // one implicit transaction, so the advisory lock is held until the DDL is done.
    await this.#query(
      `SELECT pg_advisory_xact_lock(hashtext(${literal(this.#lockName)}));\n${this.#migration}`,
      [],
    );
  }

  async acquire(input: AcquireInput): Promise<AcquireResult> {
    const values = [input.scope, input.key, input.fingerprint, input.token, input.leaseMs];
    for (let attempt = 0; attempt < ACQUIRE_ATTEMPTS; attempt++) {
      const rows = await this.#query(this.#sql.acquire, values);
      const row = rows[0];
      // No row: a concurrent acquire committed the record after this statement's snapshot was taken,
      // so the conflict was seen but the row could not be read. Run it again with a fresh snapshot.
      if (row === undefined) continue;
      if (row.state === 'acquired') return { state: 'acquired' };
      if (row.state === 'in-flight') return { state: 'in-flight', fingerprint: row.fingerprint };
      return { state: 'completed', fingerprint: row.fingerprint, response: toResponse(row) };
    }
    throw new Error(
      `PostgresStore: acquire found no row after ${ACQUIRE_ATTEMPTS} attempts under contention`,
    );
  }

  async complete(
    scope: string,
    key: string,
    token: string,
    response: StoredResponse,
    ttlMs: number,
  ): Promise<boolean> {
    const rows = await this.#query(this.#sql.complete, [
      scope,
      key,
      token,
      response.status,
      JSON.stringify(response.headers),
      toBytes(response.body),
      response.bodyOmitted,
      ttlMs,
    ]);
    return rows.length > 0;
  }

  async renew(scope: string, key: string, token: string, leaseMs: number): Promise<boolean> {
    return (await this.#query(this.#sql.renew, [scope, key, token, leaseMs])).length > 0;
  }

  async release(scope: string, key: string, token: string): Promise<boolean> {
    return (await this.#query(this.#sql.release, [scope, key, token])).length > 0;
  }

  async get(scope: string, key: string): Promise<RecordView | undefined> {
    const row = (await this.#query(this.#sql.get, [scope, key]))[0];
    if (row === undefined) return undefined;
    const view: RecordView = {
      scope,
      key,
      state: row.state,
      fingerprint: row.fingerprint,
      updatedAt: Number(row.updated),
      expiresAt: Number(row.expires),
    };
    if (row.state === 'completed') view.response = toResponse(row);
    return view;
  }

  /**
   * T2: delete up to `limit` expired records, `sweepBatchSize` per statement, oldest expiry first.
   * Each batch walks the `expires_at` index, so its cost follows what expired, not what lives.
   */
  async sweep(limit = Number.POSITIVE_INFINITY): Promise<number> {
    const bound = Math.floor(limit);
    let removed = 0;
    while (removed < bound) {
      const want = Math.min(this.#sweepBatchSize, bound - removed);
      const rows = await this.#query(this.#sql.sweep, [want]);
      const count = Number(rows[0]?.removed ?? 0);
      removed += count;
      if (count < want) break;
    }
    return removed;
  }

  /** Stops the sweep timer. The pool or `sql` passed in stays open: it is the caller's. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

interface Statements {
  acquire: string;
  complete: string;
  renew: string;
  release: string;
  get: string;
  sweep: string;
}

/**
 * Every statement the store runs. `statement_timestamp()` is the database's clock (L3, L5: several
 * machines must agree on when a lease ran out); unlike `now()` it is not frozen by a transaction the
 * caller may have open on a `Client`, and unlike `clock_timestamp()` it is stable within the
 * statement, so it can drive the `expires_at` index scan. Result columns are single lower-case words
 * so postgres.js column transforms leave them alone.
 */
function statements(table: string): Statements {
  const now = 'statement_timestamp()';
  const ms = (param: string) => `(${param}::double precision * interval '1 millisecond')`;
  const epochMs = (column: string) => `(extract(epoch from ${column}) * 1000)::double precision`;
  const response = 'r.status, r.headers::text AS headers, r.body, r.body_omitted AS omitted';
  return {
    // L1, L3, L5: one statement. `live` reads a live record; when there is one, the insert is skipped,
    // so a duplicate (a 409 or a replay) only reads: no row lock, no transaction id, no WAL flush.
    // Otherwise the insert wins on a new key, and ON CONFLICT takes over a row only when it has
    // expired (T1: expired rows are absent), with the new token and fingerprint. Every part of the
    // statement shares one snapshot: a row that a concurrent acquire committed after the snapshot
    // conflicts yet is invisible to `live`. Then no row comes back and the caller re-runs.
    acquire: `WITH live AS (
  SELECT r.state, r.fingerprint, ${response}
  FROM ${table} r
  WHERE r.scope = $1::text AND r.key = $2::text AND r.expires_at > ${now}
), taken AS (
  INSERT INTO ${table} AS r (scope, key, fingerprint, token, state, body_omitted, created_at, updated_at, expires_at)
  SELECT $1::text, $2::text, $3::text, $4::text, 'in-flight', false, ${now}, ${now}, ${now} + ${ms('$5')}
  WHERE NOT EXISTS (SELECT 1 FROM live)
  ON CONFLICT (scope, key) DO UPDATE SET
    fingerprint = excluded.fingerprint, token = excluded.token, state = 'in-flight', status = NULL,
    headers = NULL, body = NULL, body_omitted = false, created_at = excluded.created_at,
    updated_at = excluded.updated_at, expires_at = excluded.expires_at
  WHERE r.expires_at <= ${now}
  RETURNING 1
)
SELECT 'acquired' AS state, NULL AS fingerprint, NULL::integer AS status, NULL AS headers, NULL::bytea AS body, false AS omitted
FROM taken
UNION ALL
SELECT * FROM live`,
    // L4, R6: only the live owner completes; T1: the TTL runs from completion.
    complete: `UPDATE ${table} SET token = NULL, state = 'completed', status = $4::integer, headers = $5::text::jsonb,
  body = $6::bytea, body_omitted = $7::boolean, updated_at = ${now}, expires_at = ${now} + ${ms('$8')}
WHERE scope = $1::text AND key = $2::text AND token = $3::text AND expires_at > ${now}
RETURNING 1`,
    // L3, L4: a heartbeat from a token that lost the record changes nothing.
    renew: `UPDATE ${table} SET expires_at = ${now} + ${ms('$4')}
WHERE scope = $1::text AND key = $2::text AND token = $3::text AND expires_at > ${now}
RETURNING 1`,
    release: `DELETE FROM ${table}
WHERE scope = $1::text AND key = $2::text AND token = $3::text AND expires_at > ${now}
RETURNING 1`,
    get: `SELECT r.state, r.fingerprint, ${response}, ${epochMs('r.updated_at')} AS updated, ${epochMs('r.expires_at')} AS expires
FROM ${table} r
WHERE r.scope = $1::text AND r.key = $2::text AND r.expires_at > ${now}`,
    // T2: a bounded batch found through the expires_at index, deleted by ctid (a TID scan). SKIP LOCKED
    // lets several instances sweep at once and passes over rows an acquire is taking over right now.
    // The row locks pin those ctids until the DELETE, so it needs no second expiry check (one would
    // let the planner walk every expired index entry instead of the TID scan).
    sweep: `WITH doomed AS (
  DELETE FROM ${table}
  WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM ${table} WHERE expires_at <= ${now} ORDER BY expires_at LIMIT $1::integer FOR UPDATE SKIP LOCKED
  ))
  RETURNING 1
)
SELECT count(*)::integer AS removed FROM doomed`,
  };
}

function pgQuery(pool: PgQueryable, prepare: boolean): Query {
  const named = new Map<string, string>();
  // A prepared statement's name must be unique per text on a connection: derive it from the text.
  const nameOf = (text: string) => {
    let name = named.get(text);
    if (name === undefined) {
      name = `oncely_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
      named.set(text, name);
    }
    return name;
  };
  return async (text, values) => {
    const config = prepare && values.length > 0 ? { name: nameOf(text), text, values } : { text, values };
    return (await pool.query(config)).rows;
  };
}

function postgresJsQuery(sql: PostgresJsSql, prepare: boolean): Query {
  return async (text, values) => await sql.unsafe(text, values, values.length > 0 ? { prepare } : {});
}

// biome-ignore lint/suspicious/noExplicitAny: a row as the driver returns it
function toResponse(row: any): StoredResponse {
  const body: Uint8Array | null = row.body;
  return {
    status: Number(row.status),
    headers: JSON.parse(row.headers) as HeaderMap,
    // A plain Uint8Array view over the driver's Buffer: no copy.
    body: body == null ? new Uint8Array(0) : new Uint8Array(body.buffer, body.byteOffset, body.byteLength),
    bodyOmitted: row.omitted === true,
  };
}

/** Both drivers send a Buffer as bytea; a bare Uint8Array is wrapped without copying. */
function toBytes(body: Uint8Array): Buffer {
  return Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

function names(
  owner: string,
  table: string | undefined = DEFAULT_TABLE,
  schema: string | undefined = undefined,
): { qualified: string; indexName: string } {
  if (typeof table !== 'string' || !IDENTIFIER.test(table) || table.length > MAX_TABLE_LENGTH) {
    throw new TypeError(
      `${owner}: options.table must be a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*) of at most ${MAX_TABLE_LENGTH} characters`,
    );
  }
  if (
    schema !== undefined &&
    (typeof schema !== 'string' || !IDENTIFIER.test(schema) || schema.length > 63)
  ) {
    throw new TypeError(
      `${owner}: options.schema must be a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*) of at most 63 characters`,
    );
  }
  const qualified = schema === undefined ? quote(table) : `${quote(schema)}.${quote(table)}`;
  return { qualified, indexName: `${table}_expires_at_idx` };
}

function quote(identifier: string): string {
  return `"${identifier}"`;
}

function literal(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}
