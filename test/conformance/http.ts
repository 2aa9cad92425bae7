/** A raw HTTP client for the conformance suite: exact bytes, repeated header lines, no decompression. */
import { type IncomingHttpHeaders, request } from 'node:http';

export interface SendOptions {
  method?: string;
  path?: string;
  /** The Idempotency-Key; an array sends several field lines (K4). */
  key?: string | string[];
  headers?: Record<string, string | string[]>;
  body?: string | Uint8Array;
  /** Send the body in two chunks without Content-Length (chunked). */
  chunked?: boolean;
}

export interface Received {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  text: string;
  json: () => unknown;
}

export function send(base: string, options: SendOptions = {}): Promise<Received> {
  const { method = 'POST', path = '/echo', key, body } = options;
  const headers: Record<string, string | string[]> = { ...options.headers };
  if (key !== undefined) headers['Idempotency-Key'] = key;
  if (body !== undefined && !options.chunked) headers['content-length'] = String(Buffer.byteLength(body));
  if (body !== undefined && headers['content-type'] === undefined)
    headers['content-type'] = 'application/json';
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        const bytes = Buffer.concat(chunks);
        const text = bytes.toString('utf8');
        resolve({
          status: res.statusCode!,
          headers: res.headers,
          body: bytes,
          text,
          json: () => JSON.parse(text),
        });
      });
    });
    req.on('error', reject);
    if (body !== undefined && options.chunked) {
      const bytes = Buffer.from(body);
      const half = Math.floor(bytes.length / 2);
      req.write(bytes.subarray(0, half));
      req.write(bytes.subarray(half));
      req.end();
    } else {
      req.end(body);
    }
  });
}

/** Re-send until `done` holds or the deadline passes (for real lease/TTL expiry only). */
export async function sendUntil(
  base: string,
  options: SendOptions,
  done: (received: Received) => boolean,
  deadlineMs = 5_000,
): Promise<Received> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const received = await send(base, options);
    if (done(received)) return received;
    if (Date.now() > deadline)
      throw new Error(`condition not met within ${deadlineMs} ms (last status ${received.status})`);
    await new Promise((resolve) => setTimeout(resolve, 15));
  }
}
