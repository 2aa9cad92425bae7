/**
 * @module oncely/sqlite: SqliteStore, durable records in one SQLite file shared by the processes of one machine.
 */
import Database from 'better-sqlite3';
import type { AcquireInput, AcquireResult, RecordView, Store, StoredResponse } from '../core/store.js';

/** The table oncely creates unless told otherwise. The suffix changes whenever the schema does. */
export const DEFAULT_SQLITE_TABLE = 'oncely_records_v1';
/** How long a statement waits for another process's write lock before failing (SQLITE_BUSY). */
export const DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 5_000;
/** How often the background sweep runs. */
export const DEFAULT_SQLITE_SWEEP_INTERVAL_MS = 60_000;
/** Rows one sweep statement deletes at most, so no sweep holds the write lock for long (T2). */
const SWEEP_BATCH = 500;

/** Options of {@link SqliteStore}. Give exactly one of `path` and `database`. */
export interface SqliteStoreOptions {
  /**
   * File to open (created if missing), or `':memory:'` for a private in-memory database (tests).
   * oncely opens it with `journal_mode = WAL`, `busy_timeout` and `synchronous`, and closes it on `close()`.
   */
  path?: string;
  /**
   * A `better-sqlite3` database you opened. oncely uses it as configured (it sets no `PRAGMA` on it;
   * turn on WAL yourself for several processes) and never closes it.
   */
  database?: Database.Database;
  /**
   * Table holding the records; created with its index if missing. Letters, digits and `_`.
   * @default 'oncely_records_v1'
   */
  tableName?: string;
  /**
   * How long to wait for another connection's write lock, in ms (`PRAGMA busy_timeout`). Only for a
   * database oncely opens (`path`); set `timeout` when you open your own.
   * @default 5_000
   */
  busyTimeoutMs?: number;
  /**
   * `'full'` syncs the WAL on every commit, so a recorded outcome survives power loss. `'normal'` syncs
   * at checkpoints only: faster, and safe against a process crash, but a power cut may lose the last
   * commits (a retry would then run the handler again). Only for a database oncely opens (`path`).
   * @default 'full'
   */
  synchronous?: 'full' | 'normal';
  /**
   * How often expired records are deleted in the background, in ms; `0` turns the timer off (call
   * `sweep()` yourself). The timer never keeps the process alive.
   * @default 60_000
   */
  sweepIntervalMs?: number;
}

/** A row as the statements return it. */
interface Row {
  fingerprint: string;
  token: string | null;
  updated_at: number;
  expires_at: number;
  status: number | null;
  headers: string | null;
  body: Buffer | null;
  body_omitted: number | null;
}

const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/**
 * A store in a SQLite file, through `better-sqlite3`: durable across restarts and safe for several
 * processes on one machine sharing the file (WAL). Every state transition is one SQL statement or one
 * `BEGIN IMMEDIATE` transaction; every statement reads the app clock (`Date.now()`) and treats a record
 * whose `expires_at` has passed as absent (T1, T2). `better-sqlite3` is synchronous, so record
 * operations answer at once, without a promise.
 *
 * @param options exactly one of `path` / `database`; `tableName` (default `'oncely_records_v1'`),
 *   `busyTimeoutMs` (default 5 000), `synchronous` (default `'full'`), `sweepIntervalMs` (default 60 000)
 * @example
 * import { SqliteStore } from 'oncely/sqlite';
 * const store = new SqliteStore({ path: './oncely.db' });
 */
export class SqliteStore implements Store {
  readonly #db: Database.Database;
  readonly #owned: boolean;
  readonly #table: string;
  readonly #selectLive: Database.Statement<[string, string, number], Row>;
  readonly #claim: Database.Statement<
    [string, string, string, string, number, number, number],
    { token: string }
  >;
  readonly #complete: Database.Statement<
    [number, string, Buffer, number, number, number, string, string, string, number]
  >;
  readonly #renew: Database.Statement<[number, string, string, string, number]>;
  readonly #release: Database.Statement<[string, string, string, number]>;
  readonly #sweep: Database.Statement<[number, number]>;
  readonly #acquireLocked: Database.Transaction<(input: AcquireInput) => AcquireResult>;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: SqliteStoreOptions) {
    const table = options.tableName ?? DEFAULT_SQLITE_TABLE;
    if (typeof table !== 'string' || !TABLE_NAME.test(table)) {
      throw new TypeError(
        'SqliteStore: options.tableName must be 1-63 letters, digits or underscores, not starting with a digit',
      );
    }
    const interval = options.sweepIntervalMs ?? DEFAULT_SQLITE_SWEEP_INTERVAL_MS;
    if (!Number.isSafeInteger(interval) || interval < 0) {
      throw new RangeError(
        'SqliteStore: options.sweepIntervalMs must be 0 (off) or a positive integer of milliseconds',
      );
    }
    if (options.path !== undefined && options.database !== undefined) {
      throw new TypeError('SqliteStore: give options.path or options.database, not both');
    }
    if (options.database !== undefined) {
      if (options.busyTimeoutMs !== undefined || options.synchronous !== undefined) {
        throw new TypeError(
          'SqliteStore: options.busyTimeoutMs and options.synchronous apply only to a database oncely opens (options.path); ' +
            'configure your own database when you open it',
        );
      }
      this.#db = options.database;
      this.#owned = false;
    } else {
      if (typeof options.path !== 'string' || options.path === '') {
        throw new TypeError(
          "SqliteStore: options.path must be a file path or ':memory:' (or pass options.database)",
        );
      }
      const busy = options.busyTimeoutMs ?? DEFAULT_SQLITE_BUSY_TIMEOUT_MS;
      if (!Number.isSafeInteger(busy) || busy < 0) {
        throw new RangeError(
          'SqliteStore: options.busyTimeoutMs must be a non-negative integer of milliseconds',
        );
      }
      const synchronous = options.synchronous ?? 'full';
      if (synchronous !== 'full' && synchronous !== 'normal') {
        throw new TypeError("SqliteStore: options.synchronous must be 'full' or 'normal'");
      }
      this.#db = new Database(options.path, { timeout: busy });
      this.#owned = true;
      try {
        // Several processes share the file: WAL lets readers (replays) run beside one writer.
        this.#db.pragma('journal_mode = WAL');
        this.#db.pragma(`synchronous = ${synchronous.toUpperCase()}`);
      } catch (error) {
        this.#db.close();
        throw error;
      }
    }
    this.#table = table;
    const t = `"${table}"`;
    try {
      // IF NOT EXISTS: several processes may start at once; the busy timeout serialises them.
      this.#db.exec(`
        CREATE TABLE IF NOT EXISTS ${t} (
          scope        TEXT    NOT NULL,
          key          TEXT    NOT NULL,
          fingerprint  TEXT    NOT NULL,
          token        TEXT,
          updated_at   INTEGER NOT NULL,
          expires_at   INTEGER NOT NULL,
          status       INTEGER,
          headers      TEXT,
          body         BLOB,
          body_omitted INTEGER,
          PRIMARY KEY (scope, key)
        );
        CREATE INDEX IF NOT EXISTS "${table}_expires_at" ON ${t} (expires_at);
      `);
    } catch (error) {
      if (this.#owned) this.#db.close();
      throw error;
    }

    // T1/T2: every statement compares expires_at with the app clock, so an expired row is absent
    // whether or not the sweep has reached it.
    // safeIntegers(false): a user's database may default to BigInt; times and statuses fit a number.
    this.#selectLive = this.#db
      .prepare<[string, string, number], Row>(
        `SELECT fingerprint, token, updated_at, expires_at, status, headers, body, body_omitted
           FROM ${t} WHERE scope = ? AND key = ? AND expires_at > ?`,
      )
      .safeIntegers(false);
    // L3/L5: insert, or take over a row whose lease or TTL ran out (new token, outcome cleared).
    // A live row is left alone and nothing is returned.
    this.#claim = this.#db.prepare(
      `INSERT INTO ${t} (scope, key, fingerprint, token, updated_at, expires_at)
       VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (scope, key) DO UPDATE SET
         fingerprint = excluded.fingerprint, token = excluded.token,
         updated_at = excluded.updated_at, expires_at = excluded.expires_at,
         status = NULL, headers = NULL, body = NULL, body_omitted = NULL
       WHERE ${t}.expires_at <= ?
       RETURNING token`,
    );
    // L4: only the live owner's token may complete, renew or release.
    this.#complete = this.#db.prepare(
      `UPDATE ${t} SET token = NULL, status = ?, headers = ?, body = ?, body_omitted = ?,
              updated_at = ?, expires_at = ?
        WHERE scope = ? AND key = ? AND token = ? AND expires_at > ?`,
    );
    this.#renew = this.#db.prepare(
      `UPDATE ${t} SET expires_at = ? WHERE scope = ? AND key = ? AND token = ? AND expires_at > ?`,
    );
    this.#release = this.#db.prepare(
      `DELETE FROM ${t} WHERE scope = ? AND key = ? AND token = ? AND expires_at > ?`,
    );
    // T2: walks the expires_at index from the oldest expiry, so the cost is the expired rows only.
    this.#sweep = this.#db.prepare(
      `DELETE FROM ${t} WHERE rowid IN (
         SELECT rowid FROM ${t} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)`,
    );
    this.#acquireLocked = this.#db.transaction((input: AcquireInput): AcquireResult => {
      // Read the clock once the lock is held: waiting for it must not shorten the new lease.
      const now = Date.now();
      const claimed = this.#claim.get(
        input.scope,
        input.key,
        input.fingerprint,
        input.token,
        now,
        now + input.leaseMs,
        now,
      );
      if (claimed !== undefined) return { state: 'acquired' };
      // Under the write lock the live row cannot change between the two statements.
      const row = this.#selectLive.get(input.scope, input.key, now);
      if (row === undefined) throw new Error('SqliteStore: a live record vanished under the write lock');
      return found(row);
    });

    if (interval > 0) {
      this.#timer = setInterval(() => this.#sweepInBackground(), interval);
      this.#timer.unref();
    }
  }

  /** The versioned table this store uses. */
  get tableName(): string {
    return this.#table;
  }

  acquire(input: AcquireInput): AcquireResult {
    this.#open();
    // A replay or a 409 is one read: WAL readers never wait for the write lock.
    const row = this.#selectLive.get(input.scope, input.key, Date.now());
    if (row !== undefined) return found(row);
    // L5: the claim runs under BEGIN IMMEDIATE, so of all processes racing for the key exactly one
    // inserts; the others see its row once they get the lock.
    return this.#acquireLocked.immediate(input);
  }

  complete(scope: string, key: string, token: string, response: StoredResponse, ttlMs: number): boolean {
    this.#open();
    const now = Date.now();
    const body = response.body;
    const result = this.#complete.run(
      response.status,
      JSON.stringify(response.headers),
      Buffer.from(body.buffer, body.byteOffset, body.byteLength),
      response.bodyOmitted ? 1 : 0,
      now,
      now + ttlMs,
      scope,
      key,
      token,
      now,
    );
    return result.changes === 1;
  }

  renew(scope: string, key: string, token: string, leaseMs: number): boolean {
    this.#open();
    const now = Date.now();
    return this.#renew.run(now + leaseMs, scope, key, token, now).changes === 1;
  }

  release(scope: string, key: string, token: string): boolean {
    this.#open();
    return this.#release.run(scope, key, token, Date.now()).changes === 1;
  }

  get(scope: string, key: string): RecordView | undefined {
    this.#open();
    const row = this.#selectLive.get(scope, key, Date.now());
    if (row === undefined) return undefined;
    const view: RecordView = {
      scope,
      key,
      state: row.token === null ? 'completed' : 'in-flight',
      fingerprint: row.fingerprint,
      updatedAt: row.updated_at,
      expiresAt: row.expires_at,
    };
    if (row.token === null) view.response = storedResponse(row);
    return view;
  }

  /**
   * T2: delete up to `limit` expired records, oldest expiry first, in statements of at most 500 rows
   * (each its own short write transaction, so other processes are not held up), yielding to the
   * event loop between statements so a large backlog never stalls requests in this process.
   */
  async sweep(limit = Number.POSITIVE_INFINITY): Promise<number> {
    this.#open();
    const now = Date.now();
    const max = Math.floor(limit);
    let removed = 0;
    while (removed < max) {
      const batch = Math.min(SWEEP_BATCH, max - removed);
      const { changes } = this.#sweep.run(now, batch);
      removed += changes;
      if (changes < batch || this.#closed) break;
      await new Promise((resolve) => setImmediate(resolve));
    }
    return removed;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#owned) this.#db.close();
  }

  #open(): void {
    if (this.#closed) throw new Error('SqliteStore is closed');
  }

  /** One batch per tick, yielding between batches so the event loop keeps serving requests. */
  #sweepInBackground(): void {
    if (this.#closed) return;
    try {
      const { changes } = this.#sweep.run(Date.now(), SWEEP_BATCH);
      if (changes === SWEEP_BATCH) setImmediate(() => this.#sweepInBackground());
    } catch {
      // SQLITE_BUSY past the busy timeout, or the user closed their database: expired rows already
      // behave as absent (T1), so the next tick simply tries again.
    }
  }
}

function found(row: Row): AcquireResult {
  if (row.token !== null) return { state: 'in-flight', fingerprint: row.fingerprint };
  return { state: 'completed', fingerprint: row.fingerprint, response: storedResponse(row) };
}

function storedResponse(row: Row): StoredResponse {
  const body = row.body ?? Buffer.alloc(0);
  return {
    status: row.status!,
    headers: JSON.parse(row.headers!),
    // A plain Uint8Array view, not a Buffer, like every other store returns.
    body: new Uint8Array(body.buffer, body.byteOffset, body.byteLength),
    bodyOmitted: row.body_omitted === 1,
  };
}
