/**
 * The one handler every benchmark runs: parse a ~300-byte JSON order, answer 201 with a ~300-byte
 * JSON order. Same bytes in every variant, so the only difference between variants is the layer
 * under test.
 */

export const PATH = '/orders';

export const REQUEST_BODY = JSON.stringify({
  customer: 'cus_4f8e2a91c0d34b6e',
  amount: 4200,
  currency: 'eur',
  description: 'Annual subscription, plan Pro, 3 seats, billed yearly',
  items: [
    { sku: 'pro-seat', quantity: 3, unitAmount: 1200 },
    { sku: 'support-plus', quantity: 1, unitAmount: 600 },
  ],
  metadata: { source: 'checkout', campaign: 'spring-2025' },
});

/** Counts handler executions, so a run can prove new keys ran the handler and replays did not. */
export const counters = { executions: 0 };

/** The order the handler answers: ~300 bytes of JSON. */
export function order(input) {
  counters.executions++;
  return {
    id: `ord_${(1e9 + counters.executions).toString(36)}${process.pid.toString(36)}`,
    object: 'order',
    status: 'created',
    customer: input.customer,
    amount: input.amount,
    currency: input.currency,
    description: input.description,
    lines: input.items.length,
    livemode: false,
    created: 1735689600,
    metadata: input.metadata,
  };
}

/** The bare `node:http` handler: read the body, parse it, answer 201. */
export function bareHandler(req, res) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const body = JSON.stringify(order(JSON.parse(Buffer.concat(chunks).toString('utf8'))));
    res.writeHead(201, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
}
