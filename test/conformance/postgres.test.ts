import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { describe } from 'vitest';
import { PostgresStore } from '../../src/stores/postgres.js';
import { POSTGRES_URL, serviceAvailable } from '../support/services.js';
import { nodeFixture } from './fixtures/node.js';
import { describeConformance } from './suite.js';

const available = await serviceAvailable('postgres');

describe.skipIf(!available)('PostgresStore over HTTP', () => {
  // This run's own schema, dropped afterwards: nothing is left behind and runs never meet.
  const schema = `oncely_test_${randomBytes(6).toString('hex')}`;
  let pool: pg.Pool | undefined;

  describeConformance(nodeFixture, {
    label: 'node + PostgresStore',
    makeStore: async () => {
      pool = new pg.Pool({ connectionString: POSTGRES_URL, max: 4 });
      await pool.query(`CREATE SCHEMA ${schema}`);
      const store = new PostgresStore({ pool, schema });
      await store.migrate();
      return store;
    },
    cleanup: async () => {
      if (pool === undefined) return;
      await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await pool.end();
    },
  });
});
