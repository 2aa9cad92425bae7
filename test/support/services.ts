/**
 * Reachability of the real servers the Redis and PostgreSQL suites need.
 * Outside CI a missing server skips those suites loudly; with CI=true it fails them.
 */
import { connect } from 'node:net';

export const REDIS_URL = process.env.ONCELY_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const POSTGRES_URL = process.env.ONCELY_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

function reachable(url: string, defaultPort: number): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname, port: Number(port || defaultPort) });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * True when `service` answers. When it does not: with CI=true, throws (a missing server is a
 * failure in CI); otherwise prints a loud warning and returns false so the suite is skipped.
 */
export async function serviceAvailable(service: 'redis' | 'postgres'): Promise<boolean> {
  const url = service === 'redis' ? REDIS_URL : POSTGRES_URL;
  if (await reachable(url, service === 'redis' ? 6379 : 5432)) return true;
  const message = `${service} is not reachable at ${url}`;
  if (process.env.CI === 'true') throw new Error(`${message}; CI requires it (.ci/run starts it)`);
  console.warn(
    `\n!!! SKIPPED: the ${service} suites did not run: ${message}. Start it, or set ONCELY_TEST_${service.toUpperCase()}_URL.\n`,
  );
  return false;
}
