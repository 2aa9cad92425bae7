/**
 * Core benchmark server: the bare handler on node:http, or the same handler under
 * `oncely/node` withIdempotency with a MemoryStore (config.variant: 'bare' | 'oncely').
 */
import { createServer } from 'node:http';
import { withIdempotency } from '../../dist/adapters/node.js';
import { MemoryStore } from '../../dist/index.js';
import { closeServer, listen, runChild } from '../lib/child.mjs';
import { bareHandler } from '../lib/handler.mjs';

runChild(async ({ variant }) => {
  let listener = bareHandler;
  let store;
  if (variant === 'oncely') {
    store = new MemoryStore();
    listener = withIdempotency(bareHandler, { store });
  } else if (variant !== 'bare') throw new Error(`unknown variant ${variant}`);
  const server = createServer(listener);
  return {
    listen: () => listen(server),
    async close() {
      await closeServer(server);
      await store?.close();
    },
  };
});
