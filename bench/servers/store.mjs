/**
 * Store benchmark server: the handler under `oncely/node` with one store.
 * config: { store: 'bare'|'memory'|'sqlite'|'redis'|'postgres', sqlitePath, synchronous, schema,
 *           redisPrefix, redisUrl, postgresUrl, sweepIntervalMs }
 * command sweep(mode): 'batched' deletes expired rows 500 per event-loop turn (how the SQLite
 * background timer sweeps); 'sweep' awaits the store's public sweep(). Returns {ms, removed}.
 */
import { createServer } from 'node:http';
import { withIdempotency } from '../../dist/adapters/node.js';
import { MemoryStore } from '../../dist/index.js';
import { closeServer, listen, runChild } from '../lib/child.mjs';
import { bareHandler } from '../lib/handler.mjs';

/** Round trips to the backend, counted at the driver: Redis commands, SQL statements. */
const trips = {};
const count = (name) => {
  trips[name] = (trips[name] ?? 0) + 1;
};

async function openStore(config) {
  const sweepIntervalMs = config.sweepIntervalMs ?? 60_000;
  switch (config.store) {
    case 'memory': {
      const store = new MemoryStore();
      return { store, close: () => store.close() };
    }
    case 'sqlite': {
      const { SqliteStore } = await import('../../dist/stores/sqlite.js');
      if (config.countTrips) {
        // Every statement execution is one call into SQLite, BEGIN and COMMIT of a transaction included.
        const Database = (await import('better-sqlite3')).default;
        const probe = new Database(':memory:');
        const Statement = Object.getPrototypeOf(probe.prepare('SELECT 1'));
        probe.close();
        for (const method of ['run', 'get', 'all']) {
          const original = Statement[method];
          Statement[method] = function (...args) {
            count(`sqlite ${this.source.trim().split(/\s+/)[0].toUpperCase()}`);
            return original.apply(this, args);
          };
        }
      }
      const store = new SqliteStore({
        path: config.sqlitePath,
        synchronous: config.synchronous,
        sweepIntervalMs,
      });
      return { store, close: () => store.close() };
    }
    case 'redis': {
      const { RedisStore } = await import('../../dist/stores/redis.js');
      const { Redis } = await import('ioredis');
      const client = new Redis(config.redisUrl);
      if (config.countTrips) {
        const send = client.sendCommand.bind(client);
        client.sendCommand = (command, ...rest) => {
          count(`redis ${command.name.toUpperCase()}`);
          return send(command, ...rest);
        };
      }
      const store = new RedisStore({ client, prefix: config.redisPrefix });
      return {
        store,
        async close() {
          await store.close();
          await client.quit();
        },
      };
    }
    case 'postgres': {
      const { PostgresStore } = await import('../../dist/stores/postgres.js');
      const pg = (await import('pg')).default;
      const pool = new pg.Pool({ connectionString: config.postgresUrl, max: 10 });
      if (config.countTrips) {
        const query = pool.query.bind(pool);
        pool.query = (statement, ...rest) => {
          const text = typeof statement === 'string' ? statement : statement.text;
          count(`postgres ${text.trim().split(/\s+/)[0].toUpperCase()}`);
          return query(statement, ...rest);
        };
      }
      const store = new PostgresStore({ pool, schema: config.schema, sweepIntervalMs });
      await store.migrate();
      return {
        store,
        async close() {
          await store.close();
          await pool.end();
        },
      };
    }
    default:
      throw new Error(`unknown store ${config.store}`);
  }
}

runChild(async (config) => {
  const opened = config.store === 'bare' ? undefined : await openStore(config);
  const listener = opened ? withIdempotency(bareHandler, { store: opened.store }) : bareHandler;
  const server = createServer(listener);
  return {
    listen: () => listen(server),
    async close() {
      await closeServer(server);
      await opened?.close();
    },
    commands: {
      trips: () => ({ ...trips }),
      async sweep(mode) {
        const started = performance.now();
        let removed = 0;
        if (mode === 'batched') {
          for (;;) {
            const n = await opened.store.sweep(500);
            removed += n;
            if (n < 500) break;
            await new Promise((resolve) => setImmediate(resolve));
          }
        } else removed = await opened.store.sweep();
        return { ms: performance.now() - started, removed };
      },
    },
  };
});
