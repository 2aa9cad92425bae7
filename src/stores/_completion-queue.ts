/**
 * @module The order in which a MemoryStore's records completed, for eviction under `maxRecords`.
 */

/** What the queue needs of a record: it is still held (and completed) while it has a response. */
export interface Completed {
  response: unknown;
}

/**
 * Completed records, oldest completion first. A record removed from the store some other way
 * (expired, swept) loses its response and stays in the queue until it reaches the front or the
 * queue is compacted, and is skipped then: removal from the middle costs nothing, and every
 * operation is amortised O(1). (A `Set` keeps insertion order too, but V8 leaves a hole for each
 * entry deleted from its front, and finding the first entry walks past all of them until the table
 * is rebuilt: with `maxRecords` set, every new key paid for that walk.)
 */
export class CompletionQueue<T extends Completed> {
  #records: (T | undefined)[] = [];
  #head = 0;

  /** @param bound the most records the store holds at once (its `maxRecords`) */
  constructor(readonly bound: number) {}

  /** Entries held, removed records not yet dropped included. */
  get length(): number {
    return this.#records.length - this.#head;
  }

  push(record: T): void {
    this.#records.push(record);
    // When nothing is ever evicted, removed records would pile up: drop them now and then, so the
    // queue never holds more than about twice what the store can.
    if (this.length > 2 * this.bound) this.#compact();
  }

  /** Take the oldest record that still has its response off the queue; undefined if there is none. */
  shift(): T | undefined {
    const records = this.#records;
    while (this.#head < records.length) {
      const record = records[this.#head];
      records[this.#head++] = undefined;
      if (record !== undefined && record.response !== undefined) {
        // Let go of the consumed front once it is most of the array.
        if (this.#head > 1024 && this.#head * 2 > records.length) this.#compact();
        return record;
      }
    }
    this.#records = [];
    this.#head = 0;
    return undefined;
  }

  #compact(): void {
    const kept: T[] = [];
    for (let i = this.#head; i < this.#records.length; i++) {
      const record = this.#records[i];
      if (record !== undefined && record.response !== undefined) kept.push(record);
    }
    this.#records = kept;
    this.#head = 0;
  }
}
