/**
 * @module The demo upstream: a tiny payments API the gateway starts when no `--upstream` is given,
 * slow enough (1.5 s per payment) that a duplicate sent meanwhile shows the 409.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** How long `POST /payments` takes unless `?delay=ms` says otherwise. */
export const DEMO_DELAY_MS = 1_500;

interface Payment {
  id: string;
  amount: number;
  currency: string;
  status: 'succeeded';
  created: string;
}

/**
 * Start the demo payments API on `127.0.0.1` and an ephemeral port.
 * `POST /payments` (JSON `{ amount, currency }`, optional `?delay=ms`) → 201; `GET /payments/:id` → 200/404.
 *
 * @example
 * const demo = await startDemoUpstream();
 * console.log(demo.url); // http://127.0.0.1:49152
 */
export async function startDemoUpstream(): Promise<{ url: string; server: Server; close(): Promise<void> }> {
  const payments = new Map<string, Payment>();
  const timers = new Set<NodeJS.Timeout>();
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://demo');
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(`${JSON.stringify(body)}\n`);
    };
    if (req.method === 'POST' && url.pathname === '/payments') {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      let input: { amount?: unknown; currency?: unknown };
      try {
        input = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      } catch {
        return send(400, { error: 'body must be JSON like {"amount": 1000, "currency": "eur"}' });
      }
      if (!Number.isInteger(input.amount) || typeof input.currency !== 'string') {
        return send(400, { error: 'amount (integer, cents) and currency (string) are required' });
      }
      const delay = Math.min(
        Math.max(Number(url.searchParams.get('delay') ?? DEMO_DELAY_MS) || 0, 0),
        60_000,
      );
      // The slow part of a real payment: talking to the card network.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          timers.delete(timer);
          resolve();
        }, delay);
        timers.add(timer);
      });
      const payment: Payment = {
        id: `pay_${randomUUID().replaceAll('-', '').slice(0, 16)}`,
        amount: input.amount as number,
        currency: input.currency,
        status: 'succeeded',
        created: new Date().toISOString(),
      };
      payments.set(payment.id, payment);
      return send(201, payment, { location: `/payments/${payment.id}` });
    }
    const match = /^\/payments\/([\w-]+)$/.exec(url.pathname);
    if (req.method === 'GET' && match) {
      const payment = payments.get(match[1]!);
      return payment ? send(200, payment) : send(404, { error: 'no such payment' });
    }
    if (req.method === 'GET' && url.pathname === '/payments') return send(200, [...payments.values()]);
    send(404, { error: 'try POST /payments or GET /payments/:id' });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        for (const timer of timers) clearTimeout(timer);
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The three commands the demo prints: a replay, a 409 and a 422. */
export function demoInstructions(gatewayUrl: string): string {
  const post = (key: string, amount: number, query = '') =>
    `curl -si -X POST '${gatewayUrl}/payments${query}' -H 'Idempotency-Key: ${key}' ` +
    `-H 'Content-Type: application/json' -d '{"amount":${amount},"currency":"eur"}'`;
  const suffix = randomUUID().slice(0, 8);
  return [
    '',
    `oncely gateway demo: a payments API (1.5 s per payment) is running behind ${gatewayUrl}`,
    '',
    '1. Replay: run this twice. The second answer is the same payment, with Idempotent-Replayed: true.',
    `   ${post(`demo-pay-${suffix}`, 1000)}`,
    '',
    '2. 409: two copies at once (a 5 s payment). The second gets 409 idempotency_key_in_use.',
    `   ${post(`demo-slow-${suffix}`, 500, '?delay=5000')} & sleep 1; ${post(`demo-slow-${suffix}`, 500, '?delay=5000')}; wait`,
    '',
    '3. 422: the key of 1. with another amount. The answer is 422 idempotency_key_reused.',
    `   ${post(`demo-pay-${suffix}`, 2500)}`,
    '',
  ].join('\n');
}
