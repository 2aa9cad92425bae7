import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../src/stores/sqlite.js';
import { nodeFixture } from './fixtures/node.js';
import { describeConformance } from './suite.js';

const dir = mkdtempSync(join(tmpdir(), 'oncely-conformance-sqlite-'));

describeConformance(nodeFixture, {
  label: 'node + SqliteStore',
  makeStore: () => new SqliteStore({ path: join(dir, 'oncely.db') }),
  cleanup: () => rmSync(dir, { recursive: true, force: true }),
});
