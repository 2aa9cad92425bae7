/**
 * The oncely gateway as it ships (`startGateway` from dist/, the CLI's defaults: log level info,
 * one line per decision, to stdout, which the harness discards). config: { upstream, store, logLevel }
 */
import { startGateway } from '../../dist/gateway/server.js';
import { runChild } from '../lib/child.mjs';

runChild(async ({ upstream, store, logLevel, ttlMs }) => {
  let gateway;
  return {
    async listen() {
      gateway = await startGateway({ upstream, store, ttlMs, ...(logLevel ? { logLevel } : {}) });
      return Number(new URL(gateway.url).port);
    },
    close: () => gateway.close(),
  };
});
