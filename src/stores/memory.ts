/**
 * @module MemoryStore: records in this process's memory (tests, single-process servers).
 */
import type { AcquireInput, AcquireResult, RecordView, Store, StoredResponse } from '../core/store.js';
import { CompletionQueue } from './_completion-queue.js';

/** Options of {@link MemoryStore}. */
export interface MemoryStoreOptions {
  /** How often expired records are swept, in ms. The timer never keeps the process alive. @default 10_000 */
  sweepIntervalMs?: number;
  /**
   * Upper bound on the number of records. When full, the oldest completed record is dropped to make
   * room; when every record is in flight, `acquire` fails (and the request gets 503). @default unbounded
   */
  maxRecords?: number;
}

interface MemoryRecord {
  readonly scope: string;
  readonly key: string;
  readonly fingerprint: string;
  token: string | undefined; // undefined once completed
  expiresAt: number;
  updatedAt: number;
  /** The time of the record's earliest entry in the expiry heap: when a sweep next looks at it. */
  sweepAt: number;
  response: StoredResponse | undefined;
}

const ACQUIRED: AcquireResult = Object.freeze({ state: 'acquired' });

/**
 * A store in this process's memory. Serves one process: records are lost on restart and not shared.
 * Expired records are dropped on access and by a sweep whose cost is proportional to what expired (T2).
 * Its record operations answer at once, without a promise, so the engine decides in the same tick.
 *
 * @example
 * const store = new MemoryStore({ maxRecords: 100_000 });
 */
export class MemoryStore implements Store {
  // By scope, then key: a look-up hashes the strings the caller holds, whose hashes V8 caches,
  // instead of building and hashing a combined id on every call and keeping one per record.
  readonly #scopes = new Map<string, Map<string, MemoryRecord>>();
  #size = 0;
  readonly #expiries = new ExpiryHeap();
  readonly #maxRecords: number;
  /** With `maxRecords` only: completed records, oldest completion first, for eviction. */
  readonly #completed: CompletionQueue<MemoryRecord> | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: MemoryStoreOptions = {}) {
    const interval = options.sweepIntervalMs ?? 10_000;
    if (!Number.isSafeInteger(interval) || interval <= 0) {
      throw new RangeError('MemoryStore: options.sweepIntervalMs must be a positive integer of milliseconds');
    }
    const max = options.maxRecords ?? Number.POSITIVE_INFINITY;
    if (max !== Number.POSITIVE_INFINITY && (!Number.isSafeInteger(max) || max <= 0)) {
      throw new RangeError('MemoryStore: options.maxRecords must be a positive integer');
    }
    this.#maxRecords = max;
    this.#completed = max === Number.POSITIVE_INFINITY ? undefined : new CompletionQueue(max);
    this.#timer = setInterval(() => this.sweep(), interval);
    this.#timer.unref();
  }

  /** How many records are held, expired ones not yet swept included. */
  get size(): number {
    return this.#size;
  }

  acquire(input: AcquireInput): AcquireResult {
    const now = Date.now();
    const existing = this.#live(input.scope, input.key, now);
    if (existing !== undefined) {
      if (existing.response !== undefined) {
        return { state: 'completed', fingerprint: existing.fingerprint, response: existing.response };
      }
      return { state: 'in-flight', fingerprint: existing.fingerprint };
    }
    if (this.#size >= this.#maxRecords) this.#evictOne(now);
    const expiresAt = now + input.leaseMs;
    const record: MemoryRecord = {
      scope: input.scope,
      key: input.key,
      fingerprint: input.fingerprint,
      token: input.token,
      expiresAt,
      updatedAt: now,
      sweepAt: expiresAt,
      response: undefined,
    };
    let keys = this.#scopes.get(input.scope);
    if (keys === undefined) {
      keys = new Map();
      this.#scopes.set(input.scope, keys);
    }
    keys.set(input.key, record);
    this.#size++;
    this.#expiries.push(expiresAt, record);
    return ACQUIRED;
  }

  complete(scope: string, key: string, token: string, response: StoredResponse, ttlMs: number): boolean {
    const now = Date.now();
    const record = this.#live(scope, key, now);
    // L4: only the current owner may complete.
    if (record === undefined || record.token !== token) return false;
    record.token = undefined;
    record.response = response;
    record.updatedAt = now;
    this.#expireAt(record, now + ttlMs);
    this.#completed?.push(record);
    return true;
  }

  renew(scope: string, key: string, token: string, leaseMs: number): boolean {
    const now = Date.now();
    const record = this.#live(scope, key, now);
    if (record === undefined || record.token !== token) return false;
    this.#expireAt(record, now + leaseMs);
    return true;
  }

  release(scope: string, key: string, token: string): boolean {
    const record = this.#live(scope, key, Date.now());
    if (record === undefined || record.token !== token) return false;
    this.#remove(record);
    return true;
  }

  get(scope: string, key: string): RecordView | undefined {
    const record = this.#live(scope, key, Date.now());
    if (record === undefined) return undefined;
    const view: RecordView = {
      scope: record.scope,
      key: record.key,
      state: record.response === undefined ? 'in-flight' : 'completed',
      fingerprint: record.fingerprint,
      updatedAt: record.updatedAt,
      expiresAt: record.expiresAt,
    };
    if (record.response !== undefined) view.response = record.response;
    return view;
  }

  /** T2: pops expiry entries that are due; cost grows with what expired, not with what lives. */
  async sweep(limit = Number.POSITIVE_INFINITY): Promise<number> {
    return this.#sweepDue(Date.now(), limit);
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #live(scope: string, key: string, now: number): MemoryRecord | undefined {
    const record = this.#scopes.get(scope)?.get(key);
    if (record === undefined) return undefined;
    if (record.expiresAt <= now) {
      // T2: lazily on access.
      this.#remove(record);
      return undefined;
    }
    return record;
  }

  /**
   * A record has one heap entry, at `sweepAt`; one whose expiry moved later is pushed again at its
   * new expiry when that entry comes due. Only an expiry moved earlier (a TTL shorter than what is
   * left of the lease) needs an entry of its own now.
   */
  #expireAt(record: MemoryRecord, expiresAt: number): void {
    record.expiresAt = expiresAt;
    if (expiresAt < record.sweepAt) {
      record.sweepAt = expiresAt;
      this.#expiries.push(expiresAt, record);
    }
  }

  #remove(record: MemoryRecord): void {
    const keys = this.#scopes.get(record.scope)!;
    keys.delete(record.key);
    if (keys.size === 0) this.#scopes.delete(record.scope);
    this.#size--;
    // Its heap entry may outlive it (a record evicted under maxRecords keeps an entry until its TTL
    // would have ended): what the entry still holds must not include the body. No response also
    // marks it as gone for the completion queue.
    record.response = undefined;
  }

  #sweepDue(now: number, limit: number): number {
    let removed = 0;
    while (removed < limit) {
      const entry = this.#expiries.popDue(now);
      if (entry === undefined) break;
      const { record } = entry;
      // A record already gone (released, expired on access, taken over) has nothing left to sweep.
      if (this.#scopes.get(record.scope)?.get(record.key) !== record) continue;
      if (record.expiresAt <= now) {
        this.#remove(record);
        removed++;
      } else if (entry.time === record.sweepAt) {
        // Its expiry moved later since this entry was pushed: look again then.
        record.sweepAt = record.expiresAt;
        this.#expiries.push(record.expiresAt, record);
      }
      // Otherwise an earlier entry (a TTL shorter than the lease) already stood in for this one.
    }
    return removed;
  }

  /** Make room for one record: an expired one goes first (T2), then the oldest completed one. */
  #evictOne(now: number): void {
    if (this.#sweepDue(now, 1) === 1) return;
    const oldest = this.#completed!.shift();
    if (oldest === undefined) {
      throw new Error(
        `MemoryStore is full: all ${this.#maxRecords} records are in flight (options.maxRecords)`,
      );
    }
    this.#remove(oldest);
  }
}

/** A binary min-heap of (expiry time, record). */
class ExpiryHeap {
  readonly #times: number[] = [];
  readonly #records: MemoryRecord[] = [];

  push(time: number, record: MemoryRecord): void {
    const times = this.#times;
    const records = this.#records;
    let i = times.length;
    times.push(time);
    records.push(record);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (times[parent]! <= time) break;
      times[i] = times[parent]!;
      records[i] = records[parent]!;
      i = parent;
    }
    times[i] = time;
    records[i] = record;
  }

  /** Removes and returns the earliest entry if it is due by `now`. */
  popDue(now: number): { time: number; record: MemoryRecord } | undefined {
    const times = this.#times;
    const records = this.#records;
    if (times.length === 0 || times[0]! > now) return undefined;
    const top = { time: times[0]!, record: records[0]! };
    const lastTime = times.pop()!;
    const lastRecord = records.pop()!;
    const n = times.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= n) break;
        const right = left + 1;
        const child = right < n && times[right]! < times[left]! ? right : left;
        if (times[child]! >= lastTime) break;
        times[i] = times[child]!;
        records[i] = records[child]!;
        i = child;
      }
      times[i] = lastTime;
      records[i] = lastRecord;
    }
    return top;
  }
}
