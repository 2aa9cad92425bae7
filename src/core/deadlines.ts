/**
 * @module Many timeouts of one fixed length on one timer (store-call timeouts, lease heartbeats).
 */

/** One pending timeout of a {@link Deadlines}; `cancel()` it once it is no longer needed. */
export interface Deadline {
  cancel(): void;
}

class Entry implements Deadline {
  prev: Entry | undefined;
  next: Entry | undefined;

  constructor(
    readonly owner: Deadlines,
    readonly at: number,
    public onExpire: (() => void) | undefined,
  ) {}

  cancel(): void {
    if (this.onExpire === undefined) return;
    this.onExpire = undefined;
    this.owner.unlink(this);
  }
}

/**
 * Timeouts that all last `ms`, kept in the order they were added — which, since they share one
 * length, is the order they expire in — behind a single timer armed for the earliest. Adding and
 * cancelling are a list append and unlink: no timer is created or cleared per timeout, as a
 * `setTimeout` per store call would (node creates and tears down a timer list whenever its last
 * timer of a duration is cleared, which on a server answering one request at a time is every request).
 *
 * The timer is unref'd: it never keeps a process alive on its own. It may fire with nothing due
 * (everything cancelled); it then goes quiet until the next `add`.
 */
export class Deadlines {
  #head: Entry | undefined;
  #tail: Entry | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(readonly ms: number) {}

  /** Call `onExpire` once `ms` have passed, unless the returned deadline is cancelled first. */
  add(onExpire: () => void): Deadline {
    const entry = new Entry(this, performance.now() + this.ms, onExpire);
    const tail = this.#tail;
    if (tail === undefined) this.#head = entry;
    else {
      tail.next = entry;
      entry.prev = tail;
    }
    this.#tail = entry;
    if (this.#timer === undefined) this.#arm(this.ms);
    return entry;
  }

  /** @internal */
  unlink(entry: Entry): void {
    const { prev, next } = entry;
    if (prev === undefined) this.#head = next;
    else prev.next = next;
    if (next === undefined) this.#tail = prev;
    else next.prev = prev;
    entry.prev = undefined;
    entry.next = undefined;
  }

  #arm(delay: number): void {
    this.#timer = setTimeout(() => this.#fire(), Math.max(1, Math.ceil(delay)));
    this.#timer.unref();
  }

  #fire(): void {
    this.#timer = undefined;
    const now = performance.now();
    for (let entry = this.#head; entry !== undefined && entry.at <= now; entry = this.#head) {
      const onExpire = entry.onExpire;
      entry.cancel();
      onExpire?.();
    }
    const head = this.#head;
    if (head !== undefined && this.#timer === undefined) this.#arm(head.at - now);
  }
}
