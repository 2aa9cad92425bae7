import { describe, expect, it } from 'vitest';
import { CompletionQueue } from './_completion-queue.js';

interface Entry {
  name: string;
  response: unknown;
}

const record = (name: string): Entry => ({ name, response: {} });

describe('CompletionQueue', () => {
  it('hands records back oldest first, skipping those removed meanwhile', () => {
    const queue = new CompletionQueue<Entry>(10);
    const [a, b, c] = [record('a'), record('b'), record('c')];
    queue.push(a);
    queue.push(b);
    queue.push(c);
    b.response = undefined; // removed from the store some other way
    expect(queue.shift()).toBe(a);
    expect(queue.shift()).toBe(c);
    expect(queue.shift()).toBeUndefined();
  });

  it('holds at most about twice its bound when removed records are never shifted', () => {
    const queue = new CompletionQueue<Entry>(100);
    const live = record('live');
    queue.push(live);
    for (let i = 0; i < 10_000; i++) {
      const expired = record(`r${i}`);
      queue.push(expired);
      expired.response = undefined;
    }
    expect(queue.length).toBeLessThanOrEqual(201);
    expect(queue.shift()).toBe(live);
  });

  it('lets go of the front it has handed out', () => {
    const queue = new CompletionQueue<Entry>(100_000);
    for (let i = 0; i < 50_000; i++) queue.push(record(`r${i}`));
    for (let i = 0; i < 40_000; i++) queue.shift();
    expect(queue.length).toBe(10_000);
    // Compacted along the way: what is left sits at the front of a fresh array.
    expect(queue.shift()?.name).toBe('r40000');
  });
});
