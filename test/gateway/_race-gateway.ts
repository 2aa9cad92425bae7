/**
 * @module One gateway process for the race test (run by test/support/child.ts): opens its own
 * connection to the shared store, runs `startGateway` in front of the test's upstream, reports
 * `{ type: 'ready', url }` over IPC, and on `{ type: 'close' }` drains, closes and exits.
 */
import type { Store } from '../../src/core/store.js';
import { startGateway } from '../../src/gateway/server.js';

/** Which shared store this process opens; each process makes its own connection, as in production. */
export type RaceStore =
  | { kind: 'sqlite'; path: string }
  | { kind: 'redis'; url: string; prefix: string }
  | { kind: 'postgres'; url: string; schema: string };

async function open(spec: RaceStore): Promise<{ store: Store; close(): Promise<void> }> {
  if (spec.kind === 'sqlite') {
    const { SqliteStore } = await import('../../src/stores/sqlite.js');
    const store = new SqliteStore({ path: spec.path });
    return { store, close: () => store.close() };
  }
  if (spec.kind === 'redis') {
    const [{ RedisStore }, { Redis }] = await Promise.all([
      import('../../src/stores/redis.js'),
      import('ioredis'),
    ]);
    const client = new Redis(spec.url);
    const store = new RedisStore({ client, prefix: spec.prefix });
    return {
      store,
      close: async () => {
        await store.close();
        await client.quit();
      },
    };
  }
  const [{ PostgresStore }, pg] = await Promise.all([import('../../src/stores/postgres.js'), import('pg')]);
  const pool = new pg.default.Pool({ connectionString: spec.url, max: 8 });
  const store = new PostgresStore({ pool, schema: spec.schema });
  return {
    store,
    close: async () => {
      await store.close();
      await pool.end();
    },
  };
}

const [upstream, storeJson] = process.argv.slice(2);
const opened = await open(JSON.parse(storeJson!) as RaceStore);
const gateway = await startGateway({ upstream: upstream!, logLevel: 'warn' }, { store: opened.store });
process.on('message', async (message: { type?: string }) => {
  if (message.type !== 'close') return;
  await gateway.close();
  await opened.close();
  process.send!({ type: 'closed' }, () => process.disconnect());
});
process.send!({ type: 'ready', url: gateway.url });
