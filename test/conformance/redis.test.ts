import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { describe } from 'vitest';
import { RedisStore } from '../../src/stores/redis.js';
import { REDIS_URL, serviceAvailable } from '../support/services.js';
import { nodeFixture } from './fixtures/node.js';
import { describeConformance } from './suite.js';

const available = await serviceAvailable('redis');

describe.skipIf(!available)('RedisStore over HTTP', () => {
  const prefix = `oncely-test:${randomUUID()}:`;
  let client: Redis | undefined;

  describeConformance(nodeFixture, {
    label: 'node + RedisStore',
    makeStore: () => {
      client = new Redis(REDIS_URL);
      return new RedisStore({ client, prefix });
    },
    cleanup: async () => {
      if (client === undefined) return;
      // Leave nothing behind: every key this run wrote sits under its random prefix.
      let cursor = '0';
      do {
        const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
        if (keys.length > 0) await client.del(...keys);
        cursor = next;
      } while (cursor !== '0');
      await client.quit();
    },
  });
});
