/**
 * @module A TCP proxy a test can cut, blackhole and restore, to take a shared server (PostgreSQL)
 * away from the processes under test without touching the server itself.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

/** How the proxy treats traffic. */
export type ProxyMode = 'open' | 'cut' | 'blackhole';

interface Pair {
  client: Socket;
  upstream: Socket | undefined;
  /** Bytes held back while blackholed, in order, per direction. */
  toUpstream: Buffer[];
  toClient: Buffer[];
}

/**
 * Forwards 127.0.0.1:`port` to `target`.
 * - `cut()`: every connection is reset and new ones are reset on arrival (a crashed server, a
 *   firewall rejecting);
 * - `blackhole()`: connections stay up but nothing goes through, and new ones are accepted and then
 *   left hanging (a partition: TCP holds the bytes and delivers them once the path is back);
 * - `restore()`: back to forwarding, delivering what the blackhole held.
 *
 * @example
 * const proxy = await TcpProxy.start({ host: '127.0.0.1', port: 5432 });
 * proxy.cut(); proxy.restore(); await proxy.close();
 */
export class TcpProxy {
  #mode: ProxyMode = 'open';
  readonly #pairs = new Set<Pair>();

  private constructor(
    readonly server: Server,
    readonly port: number,
    readonly target: { host: string; port: number },
  ) {}

  static async start(target: { host: string; port: number }): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined;
    const server = createServer((client) => proxy!.#accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    proxy = new TcpProxy(server, (server.address() as { port: number }).port, target);
    return proxy;
  }

  get mode(): ProxyMode {
    return this.#mode;
  }

  /** Connections currently open through the proxy. */
  get connections(): number {
    return this.#pairs.size;
  }

  cut(): void {
    this.#mode = 'cut';
    for (const pair of this.#pairs) this.#drop(pair);
  }

  blackhole(): void {
    this.#mode = 'blackhole';
  }

  restore(): void {
    this.#mode = 'open';
    for (const pair of this.#pairs) {
      if (pair.upstream === undefined) this.#dial(pair);
      else this.#flush(pair);
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #accept(client: Socket): void {
    if (this.#mode === 'cut') {
      client.resetAndDestroy();
      return;
    }
    const pair: Pair = { client, upstream: undefined, toUpstream: [], toClient: [] };
    this.#pairs.add(pair);
    client.on('data', (chunk: Buffer) => {
      pair.toUpstream.push(chunk);
      this.#flush(pair);
    });
    client.on('error', () => this.#drop(pair));
    client.on('close', () => this.#drop(pair));
    if (this.#mode === 'open') this.#dial(pair);
  }

  #dial(pair: Pair): void {
    const upstream = connect(this.target);
    pair.upstream = upstream;
    upstream.on('connect', () => this.#flush(pair));
    upstream.on('data', (chunk: Buffer) => {
      pair.toClient.push(chunk);
      this.#flush(pair);
    });
    upstream.on('error', () => this.#drop(pair));
    upstream.on('close', () => this.#drop(pair));
  }

  /** Deliver what is held, unless blackholed (then it waits for `restore()`). */
  #flush(pair: Pair): void {
    if (this.#mode !== 'open') return;
    const upstream = pair.upstream;
    if (upstream === undefined || upstream.connecting) return;
    for (const chunk of pair.toUpstream.splice(0)) upstream.write(chunk);
    for (const chunk of pair.toClient.splice(0)) pair.client.write(chunk);
  }

  #drop(pair: Pair): void {
    if (!this.#pairs.delete(pair)) return;
    if (!pair.client.destroyed) pair.client.resetAndDestroy();
    if (pair.upstream !== undefined && !pair.upstream.destroyed) pair.upstream.resetAndDestroy();
  }
}
