/**
 * @module Child processes that run TypeScript straight from src/ and test/, for suites that need
 * real processes (races, crashes, zombies, outages, the gateway).
 *
 * Node 20 cannot run `.ts` files (no `--experimental-strip-types`) and tsx is not a dependency, so
 * each child gets a tiny module hook (`module.register`) that transpiles `.ts` with the `typescript`
 * package already installed (`transpileModule`: no type check, milliseconds per file) and maps the
 * `.js` import suffixes our sources use back to their `.ts` files. Nothing is built or written to
 * disk, so `npm test` works on a clean checkout.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const typescriptUrl = pathToFileURL(createRequire(import.meta.url).resolve('typescript')).href;
const CACHE_DIR = join(tmpdir(), `oncely-ts-cache-${process.getuid?.() ?? 'user'}`);

// Runs in Node's loader thread. Plain JavaScript: it is what makes TypeScript loadable.
// Transpiled files are cached on disk by path, size and mtime, so only the first child after an edit
// pays for loading the compiler; the others (and later runs) read plain JavaScript.
const HOOKS = `
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cache = ${JSON.stringify(CACHE_DIR)};
let ts;
const ours = (url) => url.startsWith('file:') && url.endsWith('.ts') && !url.includes('/node_modules/');

export async function resolve(specifier, context, next) {
  const parent = context.parentURL;
  if (parent !== undefined && ours(parent) && /^\\.\\.?\\//.test(specifier) && specifier.endsWith('.js')) {
    const candidate = new URL(specifier.slice(0, -3) + '.ts', parent);
    if (existsSync(fileURLToPath(candidate))) return { url: candidate.href, shortCircuit: true };
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!ours(url)) return next(url, context);
  const fileName = fileURLToPath(url);
  const { size, mtimeMs } = statSync(fileName);
  const id = createHash('sha256').update(JSON.stringify([fileName, size, mtimeMs])).digest('hex');
  const cached = cache + '/' + id + '.js';
  if (existsSync(cached)) return { format: 'module', source: readFileSync(cached, 'utf8'), shortCircuit: true };
  ts ??= (await import(${JSON.stringify(typescriptUrl)})).default;
  const { outputText } = ts.transpileModule(readFileSync(fileName, 'utf8'), {
    fileName,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      experimentalDecorators: true,
      emitDecoratorMetadata: true,
      inlineSourceMap: true,
      inlineSources: true,
    },
  });
  // Write then rename: children starting together never read a half-written file.
  mkdirSync(cache, { recursive: true });
  const partial = cached + '.' + process.pid + '.' + Math.random().toString(36).slice(2);
  writeFileSync(partial, outputText);
  renameSync(partial, cached);
  return { format: 'module', source: outputText, shortCircuit: true };
}
`;

const dataUrl = (source: string) => `data:text/javascript;base64,${Buffer.from(source).toString('base64')}`;
const REGISTER = dataUrl(
  `import { register } from 'node:module'; register(${JSON.stringify(dataUrl(HOOKS))});`,
);

/** The `execArgv` that lets a Node 20 process import `.ts` files from this repository. */
export const TS_EXEC_ARGV: readonly string[] = ['--enable-source-maps', '--import', REGISTER];

/** A message over the IPC channel; every message the helpers understand has a string `type`. */
export interface ChildMessage {
  type: string;
  [field: string]: unknown;
}

const live = new Set<TsChild>();

/**
 * A TypeScript child process with an IPC channel. Messages are queued as they arrive, so
 * {@link TsChild.next} never misses one sent before it was called. stdout and stderr are kept
 * (see {@link TsChild.output}) and quoted when the child dies early.
 */
export class TsChild {
  readonly process: ChildProcess;
  /** stdout and stderr, interleaved, for diagnostics. */
  output = '';
  /** Resolves once the process has exited, with its code or the signal that ended it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly #inbox: ChildMessage[] = [];
  readonly #waiters = new Set<() => void>();

  constructor(file: string, args: readonly string[], env: NodeJS.ProcessEnv | undefined) {
    this.process = fork(file, [...args], {
      // Never inherit the test runner's execArgv: the child gets exactly the TypeScript hook.
      execArgv: [...TS_EXEC_ARGV],
      env: env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const append = (chunk: Buffer) => {
      this.output += chunk.toString();
      if (this.output.length > 64_000) this.output = this.output.slice(-32_000);
    };
    this.process.stdout!.on('data', append);
    this.process.stderr!.on('data', append);
    this.process.on('message', (message: ChildMessage) => {
      this.#inbox.push(message);
      this.#wake();
    });
    this.exited = new Promise((resolve) => {
      this.process.once('exit', (code, signal) => {
        this.#exit = { code, signal };
        live.delete(this);
        this.#wake();
        resolve(this.#exit);
      });
    });
    live.add(this);
  }

  /** The process id (defined once spawned). */
  get pid(): number {
    return this.process.pid!;
  }

  /**
   * The next message of `type` (taken off the queue), waiting for it if need be. Rejects if the child
   * exits first, quoting its output.
   */
  next<T extends ChildMessage = ChildMessage>(type: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const check = () => {
        const index = this.#inbox.findIndex((message) => message.type === type);
        if (index >= 0) {
          this.#waiters.delete(check);
          resolve(this.#inbox.splice(index, 1)[0] as T);
          return;
        }
        if (this.#exit !== undefined) {
          this.#waiters.delete(check);
          const { code, signal } = this.#exit;
          reject(new Error(`child ${this.pid} exited (${signal ?? code}) before '${type}':\n${this.output}`));
        }
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** All queued messages of `type`, removed from the queue; does not wait. */
  drain<T extends ChildMessage = ChildMessage>(type: string): T[] {
    const taken: T[] = [];
    for (let i = 0; i < this.#inbox.length; ) {
      if (this.#inbox[i]!.type === type) taken.push(this.#inbox.splice(i, 1)[0] as T);
      else i++;
    }
    return taken;
  }

  /** Send a message; resolves once it is handed to the channel. */
  send(message: ChildMessage): Promise<void> {
    return new Promise((resolve, reject) => {
      this.process.send(message, (error) => (error ? reject(error) : resolve()));
    });
  }

  /** Send `message` and wait for the reply of type `replyType`. */
  async ask<T extends ChildMessage = ChildMessage>(message: ChildMessage, replyType: string): Promise<T> {
    const reply = this.next<T>(replyType);
    await this.send(message);
    return reply;
  }

  /** Send a signal (default SIGKILL) and wait for the exit; a no-op once exited. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.#exit !== undefined) return;
    this.process.kill(signal);
    if (signal === 'SIGSTOP' || signal === 'SIGCONT') return;
    await this.exited;
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }
}

/**
 * Run a TypeScript file as a child process with an IPC channel.
 *
 * @param file absolute path of the `.ts` entry (it may import other `.ts` files with `.js` suffixes)
 * @param args its argv after the file name; default none
 * @param env its environment; default this process's
 * @example
 * const child = spawnTs(join(import.meta.dirname, '_server.ts'), [JSON.stringify(config)]);
 * const { port } = await child.next<{ type: 'ready'; port: number }>('ready');
 * afterAll(() => killAll());
 */
export function spawnTs(file: string, args: readonly string[] = [], env?: NodeJS.ProcessEnv): TsChild {
  return new TsChild(file, args, env);
}

/**
 * SIGKILL every child this module spawned that is still running (stopped ones too: SIGKILL ends a
 * SIGSTOPped process), and wait for them to exit. Call it from `afterAll`.
 */
export async function killAll(): Promise<void> {
  await Promise.all([...live].map((child) => child.kill('SIGKILL')));
}
