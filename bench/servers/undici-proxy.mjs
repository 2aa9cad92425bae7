/**
 * The plain reverse proxy the gateway is measured against: node:http in front, an undici Pool to
 * the upstream (the same client and timeouts as the oncely gateway), hop-by-hop headers dropped,
 * bodies streamed both ways, no idempotency. config: { upstream }
 */
import { createServer } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'undici';
import { closeServer, listen, runChild } from '../lib/child.mjs';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
  'host',
  'expect',
]);

function endToEnd(headers) {
  const kept = {};
  for (const [name, value] of Object.entries(headers)) {
    if (!HOP_BY_HOP.has(name) && value !== undefined) kept[name] = value;
  }
  return kept;
}

runChild(async ({ upstream }) => {
  const timeout = 30_000;
  const pool = new Pool(upstream, { connectTimeout: 10_000, headersTimeout: timeout, bodyTimeout: timeout });
  const server = createServer(async (req, res) => {
    const length = req.headers['content-length'];
    const hasBody =
      length !== undefined ? Number(length) > 0 : req.headers['transfer-encoding'] !== undefined;
    let answer;
    try {
      answer = await pool.request({
        method: req.method,
        path: req.url,
        headers: endToEnd(req.headers),
        body: hasBody ? req : null,
      });
    } catch {
      res.writeHead(502).end();
      return;
    }
    res.writeHead(answer.statusCode, endToEnd(answer.headers));
    await pipeline(answer.body, res).catch(() => res.destroy());
  });
  return {
    listen: () => listen(server),
    async close() {
      await closeServer(server);
      await pool.close();
    },
  };
});
