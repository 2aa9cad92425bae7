import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openStore, StoreOpenError } from '../../src/gateway/stores.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('gateway store URL sqlite:PATH?synchronous=', () => {
  it('T1: ?synchronous=normal opens the database at PATH, and records are kept', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oncely-gw-sync-'));
    dirs.push(dir);
    const path = join(dir, 'g.db');
    const opened = await openStore(`sqlite:${path}?synchronous=normal`);
    try {
      expect(opened.kind).toBe('sqlite');
      expect(existsSync(path)).toBe(true);
      const input = { scope: 's', key: 'k', fingerprint: 'f', token: 't', leaseMs: 60_000 };
      expect(await opened.store.acquire(input)).toEqual({ state: 'acquired' });
      expect((await opened.store.get('s', 'k'))?.state).toBe('in-flight');
    } finally {
      await opened.close();
    }
  });

  it('T1: any other ?synchronous value is refused at startup, naming the option', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oncely-gw-sync-'));
    dirs.push(dir);
    const opening = openStore(`sqlite:${join(dir, 'g.db')}?synchronous=off`);
    await expect(opening).rejects.toBeInstanceOf(StoreOpenError);
    await expect(opening).rejects.toThrow(/synchronous must be full or normal/);
  });
});
