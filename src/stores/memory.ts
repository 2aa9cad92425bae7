/**
 * @module MemoryStore: records in this process's memory (tests, single-process servers).
 */
import type { AcquireInput, AcquireResult, RecordView, Store, StoredResponse } from '../core/store.js';

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
  /** The record's key in the map, kept so that later calls re-use it rather than hold copies. */
  readonly id: string;
  readonly scope: string;
  readonly key: string;
  readonly fingerprint: string;
  token: string | undefined; // undefined once completed
  expiresAt: number;
  updatedAt: number;
  response: StoredResponse | undefined;
}

/**
 * A store in this process's memory. Serves one process: records are lost on restart and not shared.
 * Expired records are dropped on access and by a sweep whose cost is proportional to what expired (T2).
 *
 * @example
 * const store = new MemoryStore({ maxRecords: 100_000 });
 */
export class MemoryStore implements Store {
  readonly #records = new Map<string, MemoryRecord>();
  readonly #expiries = new ExpiryHeap();
  readonly #maxRecords: number;
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
    this.#timer = setInterval(() => this.sweep(), interval);
    this.#timer.unref();
  }

  /** How many records are held, expired ones not yet swept included. */
  get size(): number {
    return this.#records.size;
  }

  async acquire(input: AcquireInput): Promise<AcquireResult> {
    const id = recordId(input.scope, input.key);
    const now = Date.now();
    const existing = this.#live(id, now);
    if (existing !== undefined) {
      if (existing.response !== undefined) {
        return { state: 'completed', fingerprint: existing.fingerprint, response: existing.response };
      }
      return { state: 'in-flight', fingerprint: existing.fingerprint };
    }
    if (this.#records.size >= this.#maxRecords) this.#evictOne(now);
    const record: MemoryRecord = {
      id,
      scope: input.scope,
      key: input.key,
      fingerprint: input.fingerprint,
      token: input.token,
      expiresAt: now + input.leaseMs,
      updatedAt: now,
      response: undefined,
    };
    this.#records.set(id, record);
    this.#expiries.push(record.expiresAt, record);
    return { state: 'acquired' };
  }

  async complete(
    scope: string,
    key: string,
    token: string,
    response: StoredResponse,
    ttlMs: number,
  ): Promise<boolean> {
    const id = recordId(scope, key);
    const now = Date.now();
    const record = this.#live(id, now);
    // L4: only the current owner may complete.
    if (record === undefined || record.token !== token) return false;
    record.token = undefined;
    record.response = response;
    record.updatedAt = now;
    record.expiresAt = now + ttlMs;
    // Re-insert so the map's order is completion order: eviction drops the oldest first.
    this.#records.delete(record.id);
    this.#records.set(record.id, record);
    return true;
  }

  async renew(scope: string, key: string, token: string, leaseMs: number): Promise<boolean> {
    const id = recordId(scope, key);
    const record = this.#live(id, Date.now());
    if (record === undefined || record.token !== token) return false;
    record.expiresAt = Date.now() + leaseMs;
    return true;
  }

  async release(scope: string, key: string, token: string): Promise<boolean> {
    const id = recordId(scope, key);
    const record = this.#live(id, Date.now());
    if (record === undefined || record.token !== token) return false;
    this.#records.delete(id);
    return true;
  }

  async get(scope: string, key: string): Promise<RecordView | undefined> {
    const record = this.#live(recordId(scope, key), Date.now());
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

  /**
   * T2: pops expiry entries that are due; cost grows with what expired, not with what lives. Each
   * record has one entry, at the expiry it had when the entry was pushed: a record renewed or
   * completed since then is pushed again at its new expiry when the old one comes due.
   */
  async sweep(limit = Number.POSITIVE_INFINITY): Promise<number> {
    const now = Date.now();
    let removed = 0;
    while (removed < limit) {
      const record = this.#expiries.popDue(now);
      if (record === undefined) break;
      // A record already dropped (released, expired on access, taken over) has nothing left to do.
      if (this.#records.get(record.id) !== record) continue;
      if (record.expiresAt <= now) {
        this.#records.delete(record.id);
        removed++;
      } else {
        this.#expiries.push(record.expiresAt, record);
      }
    }
    return removed;
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #live(id: string, now: number): MemoryRecord | undefined {
    const record = this.#records.get(id);
    if (record === undefined) return undefined;
    if (record.expiresAt <= now) {
      // T2: lazily on access.
      this.#records.delete(id);
      return undefined;
    }
    return record;
  }

  #evictOne(now: number): void {
    for (const [id, record] of this.#records) {
      if (record.response !== undefined || record.expiresAt <= now) {
        this.#records.delete(id);
        return;
      }
    }
    throw new Error(
      `MemoryStore is full: all ${this.#maxRecords} records are in flight (options.maxRecords)`,
    );
  }
}

function recordId(scope: string, key: string): string {
  return `${scope}\u0000${key}`;
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

  /** Removes and returns the record of the earliest entry if it is due by `now`. */
  popDue(now: number): MemoryRecord | undefined {
    const times = this.#times;
    const records = this.#records;
    if (times.length === 0 || times[0]! > now) return undefined;
    const top = records[0]!;
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
