/**
 * The server side of every benchmark: runs in a child process, listens on 127.0.0.1 (port 0), and
 * answers the parent over IPC:
 *   {type:'start'}            -> remember process.cpuUsage() and the handler counter
 *   {type:'stop', id}             -> reply {id, type:'stopped', cpuMicros, userMicros, gcMicros, executions} for the window
 *   {type:'call', id, name, args} -> run one of the server's commands, reply {id, type:'result', value}
 *   {type:'close'}            -> close the server (and its store) and exit
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { counters } from './handler.mjs';

/**
 * @param {(config: any) => Promise<{ listen(): Promise<number>, close(): Promise<void>, commands?: Record<string, Function> }>} create
 */
export async function runChild(create) {
  const config = JSON.parse(process.env.BENCH_CONFIG ?? '{}');
  let server;
  try {
    server = await create(config);
    const port = await server.listen();
    process.send({ type: 'ready', port });
  } catch (error) {
    process.send({ type: 'failed', error: String(error?.stack ?? error) });
    process.exit(1);
  }
  let cpu;
  let executions = 0;
  // Time the main thread spent paused in garbage collection, over the window.
  let gcMicros = 0;
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcMicros += entry.duration * 1000;
  }).observe({ entryTypes: ['gc'] });
  process.on('message', async (message) => {
    try {
      if (message.type === 'start') {
        executions = counters.executions;
        gcMicros = 0;
        cpu = process.cpuUsage();
      } else if (message.type === 'stop') {
        const used = process.cpuUsage(cpu);
        process.send({
          id: message.id,
          type: 'stopped',
          cpuMicros: used.user + used.system,
          userMicros: used.user,
          gcMicros,
          executions: counters.executions - executions,
        });
      } else if (message.type === 'call') {
        const value = await server.commands[message.name](...(message.args ?? []));
        process.send({ id: message.id, type: 'result', value });
      } else if (message.type === 'close') {
        await server.close();
        process.exit(0);
      }
    } catch (error) {
      process.send({ id: message.id, type: 'error', error: String(error?.stack ?? error) });
    }
  });
  process.on('disconnect', () => process.exit(0));
}

/** Listen a node:http server on a free loopback port. */
export function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

/** Close a node:http server, dropping idle keep-alive sockets. */
export function closeServer(server) {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections?.();
  });
}
