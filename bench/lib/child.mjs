/**
 * The server side of every benchmark: runs in a child process, listens on 127.0.0.1 (port 0), and
 * answers the parent over IPC:
 *   {type:'start'}            -> remember process.cpuUsage() and the handler counter
 *   {type:'stop', id}             -> reply {id, type:'stopped', cpuMicros, executions} for the window
 *   {type:'call', id, name, args} -> run one of the server's commands, reply {id, type:'result', value}
 *   {type:'close'}            -> close the server (and its store) and exit
 */
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
  process.on('message', async (message) => {
    try {
      if (message.type === 'start') {
        executions = counters.executions;
        cpu = process.cpuUsage();
      } else if (message.type === 'stop') {
        const used = process.cpuUsage(cpu);
        process.send({
          id: message.id,
          type: 'stopped',
          cpuMicros: used.user + used.system,
          userMicros: used.user,
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
