// A tiny orders API that knows nothing about idempotency: every POST creates a new order.
// Run it, put `oncely gateway` in front of it, and retries stop creating duplicates.
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 8080);
let next = 1;
const orders = new Map();

createServer(async (req, res) => {
  const send = (status, body, headers = {}) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(`${JSON.stringify(body)}\n`);
  };
  const url = new URL(req.url, 'http://upstream');
  if (req.method === 'POST' && url.pathname === '/orders') {
    let body = '';
    for await (const chunk of req) body += chunk;
    // Slow on purpose, so a duplicate sent meanwhile shows the 409.
    await new Promise((resolve) => setTimeout(resolve, Number(url.searchParams.get('delay') ?? 1000)));
    const order = {
      id: next++,
      item: JSON.parse(body || '{}').item ?? 'unknown',
      forwardedFor: req.headers['x-forwarded-for'],
    };
    orders.set(order.id, order);
    console.log(`created order ${order.id}`);
    return send(201, order, { location: `/orders/${order.id}` });
  }
  if (req.method === 'POST' && url.pathname === '/crash') {
    // Acts, then drops the connection: the gateway records a 502 (G2) so a retry cannot act twice.
    console.log('crash: acted, then dropped the connection');
    return req.socket.destroy();
  }
  if (req.method === 'GET' && url.pathname === '/orders') return send(200, [...orders.values()]);
  send(404, { error: 'try POST /orders or GET /orders' });
}).listen(port, '127.0.0.1', () => console.log(`orders API on http://127.0.0.1:${port}`));
