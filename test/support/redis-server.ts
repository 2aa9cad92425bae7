/**
 * @module A private `redis-server` child process that a test may kill and restart on the same port,
 * so outages never touch the shared Redis that other suites use.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';

/** True when a `redis-server` binary is on the PATH. */
export function redisServerInstalled(): boolean {
  return spawnSync('redis-server', ['--version']).status === 0;
}

/** A port the kernel just handed out (and took back). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/**
 * A throwaway Redis (no persistence) on 127.0.0.1.
 *
 * @example
 * const redis = await PrivateRedis.start();
 * await redis.kill(); // an outage
 * await redis.start(); // back, same port, empty
 */
export class PrivateRedis {
  #process: ChildProcess | undefined;

  private constructor(readonly port: number) {}

  /** Start on a free port (or `port`); resolves once it accepts connections. */
  static async start(port?: number): Promise<PrivateRedis> {
    const redis = new PrivateRedis(port ?? (await freePort()));
    await redis.start();
    return redis;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** (Re)start on the same port; resolves once Redis logs that it is ready. */
  start(): Promise<void> {
    if (this.#process !== undefined) return Promise.reject(new Error('PrivateRedis is running'));
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.#process = child;
    return new Promise((resolve, reject) => {
      let output = '';
      const onData = (chunk: Buffer) => {
        output += chunk.toString();
        if (output.includes('Ready to accept connections')) {
          child.stdout!.off('data', onData);
          child.off('exit', onExit);
          child.stdout!.resume();
          resolve();
        }
      };
      const onExit = (code: number | null) => {
        this.#process = undefined;
        reject(new Error(`redis-server exited (${code}) before it was ready:\n${output}`));
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.once('exit', onExit);
    });
  }

  /** SIGKILL it (a crash, not a shutdown) and wait until it is gone. Safe when already stopped. */
  async kill(): Promise<void> {
    const child = this.#process;
    if (child === undefined) return;
    this.#process = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }
}
