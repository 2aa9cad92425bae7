import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Deadlines } from './deadlines.js';

describe('Deadlines', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('S2: each timeout fires once its own ms have passed, not before', async () => {
    const deadlines = new Deadlines(100);
    const fired: string[] = [];
    deadlines.add(() => fired.push('a'));
    await vi.advanceTimersByTimeAsync(40);
    deadlines.add(() => fired.push('b'));
    await vi.advanceTimersByTimeAsync(59);
    expect(fired).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(fired).toEqual(['a']);
    await vi.advanceTimersByTimeAsync(39);
    expect(fired).toEqual(['a']);
    await vi.advanceTimersByTimeAsync(1);
    expect(fired).toEqual(['a', 'b']);
  });

  it('S2: a cancelled timeout never fires, wherever it sits in the queue', async () => {
    const deadlines = new Deadlines(50);
    const fired: number[] = [];
    const pending = [0, 1, 2, 3, 4].map((n) => deadlines.add(() => fired.push(n)));
    pending[0]!.cancel();
    pending[2]!.cancel();
    pending[4]!.cancel();
    pending[2]!.cancel(); // twice is harmless
    await vi.advanceTimersByTimeAsync(50);
    expect(fired).toEqual([1, 3]);
  });

  it('S2: many timeouts share one timer instead of one each', async () => {
    const deadlines = new Deadlines(1_000);
    const setTimeoutSpy = vi.spyOn(globalThis, 'setTimeout');
    for (let i = 0; i < 100; i++) deadlines.add(() => {}).cancel();
    const kept = deadlines.add(() => {});
    expect(setTimeoutSpy).toHaveBeenCalledTimes(1);
    kept.cancel();
  });

  it('L3: a timeout may add another from its callback (a heartbeat), which fires ms later', async () => {
    const deadlines = new Deadlines(10);
    let beats = 0;
    const beat = () => {
      beats++;
      if (beats < 3) deadlines.add(beat);
    };
    deadlines.add(beat);
    await vi.advanceTimersByTimeAsync(25);
    expect(beats).toBe(2);
    await vi.advanceTimersByTimeAsync(5);
    expect(beats).toBe(3);
    await vi.advanceTimersByTimeAsync(100);
    expect(beats).toBe(3);
  });

  it('S2: after everything was cancelled, the queue goes quiet and arms again on the next add', async () => {
    const deadlines = new Deadlines(20);
    deadlines.add(() => {}).cancel();
    await vi.advanceTimersByTimeAsync(20);
    expect(vi.getTimerCount()).toBe(0);
    let fired = false;
    deadlines.add(() => {
      fired = true;
    });
    await vi.advanceTimersByTimeAsync(20);
    expect(fired).toBe(true);
  });
});
