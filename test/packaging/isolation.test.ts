/**
 * Importing one oncely entry loads no framework, driver or gateway package it does not wrap (the
 * core entry loads none): a user of `oncely/hono` never pays for Express, Redis or pino, and an
 * optional peer that is not installed cannot break an entry that does not wrap it.
 *
 * Each entry is imported in a fresh Node process from the current sources, transpiled to plain ESM
 * under `.tmp/` (inside the repo, so bare specifiers resolve to its node_modules). The child records
 * every module it loads: a module `resolve` hook sees each ESM resolution, and `require.cache` holds
 * every CommonJS module (including those a CommonJS package requires on its own, which Node 20's
 * ESM hooks do not see).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** Packages an entry may load only if it wraps them: every optional peer and the gateway's dependencies. */
const WATCHED = [
  'express',
  'fastify',
  'fastify-plugin',
  'koa',
  '@nestjs/common',
  '@nestjs/core',
  'rxjs',
  'hono',
  '@hono/node-server',
  'ioredis',
  'redis',
  'pg',
  'postgres',
  'better-sqlite3',
  'vitest',
  'pino',
  'prom-client',
  'undici',
];

/** What each public entry may load of WATCHED. */
const ALLOWED: Record<string, string[]> = {
  oncely: [],
  'oncely/fetch': [],
  'oncely/node': [],
  'oncely/express': ['express'],
  'oncely/fastify': ['fastify', 'fastify-plugin'],
  'oncely/hono': ['hono', '@hono/node-server'],
  'oncely/koa': ['koa'],
  'oncely/nestjs': ['@nestjs/common', '@nestjs/core', 'rxjs'],
  'oncely/sqlite': ['better-sqlite3'],
  'oncely/redis': ['ioredis', 'redis'],
  'oncely/postgres': ['pg', 'postgres'],
  'oncely/client': [],
  'oncely/testing': ['vitest'],
  // The gateway's own dependencies; store drivers are imported only when a store URL names them.
  'oncely/gateway': ['pino', 'prom-client', 'undici'],
};

/** package.json `exports`: subpath → source file (dist/x.js ← src/x.ts). */
function entries(): Map<string, string> {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
    exports: Record<string, string | { default: string }>;
  };
  const map = new Map<string, string>();
  for (const [key, target] of Object.entries(pkg.exports)) {
    if (typeof target === 'string') continue; // ./package.json
    const name = key === '.' ? 'oncely' : `oncely/${key.slice(2)}`;
    map.set(name, target.default.replace(/^\.\/dist\//, 'src/').replace(/\.js$/, '.ts'));
  }
  return map;
}

/** The package a resolved module belongs to (`@scope/name` or `name`), or undefined for our own files. */
function packageOf(file: string): string | undefined {
  const at = file.lastIndexOf('/node_modules/');
  if (at === -1) return undefined;
  const [first, second] = file.slice(at + '/node_modules/'.length).split('/');
  return first?.startsWith('@') ? `${first}/${second}` : first;
}

/** Runs in the loader thread: appends every resolved URL to the log synchronously. */
const HOOKS = `import { appendFileSync } from 'node:fs';
let log;
export function initialize(data) { log = data.log; }
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(log, result.url + '\\n');
  return result;
}
`;

/** Imports one entry, then prints every file loaded (the hook's log and require.cache) as JSON. */
const CHILD = `import { register, createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
const [entry, hooks, log] = process.argv.slice(2);
register(hooks, { data: { log } });
await import(entry);
const urls = readFileSync(log, 'utf8').split('\\n').filter(Boolean);
const cjs = Object.keys(createRequire(import.meta.url).cache);
process.stdout.write(JSON.stringify([...urls, ...cjs]));
`;

/** Transpiles src/ (tests excluded) to ESM in `out`, keeping the layout so relative imports hold. */
function transpileSources(out: string): void {
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((item) =>
      item.isDirectory() ? walk(join(dir, item.name)) : [join(dir, item.name)],
    );
  for (const file of walk(join(root, 'src'))) {
    if (!file.endsWith('.ts') || file.endsWith('.test.ts')) continue;
    const { outputText } = ts.transpileModule(readFileSync(file, 'utf8'), {
      fileName: file,
      compilerOptions: {
        module: ts.ModuleKind.ESNext,
        target: ts.ScriptTarget.ES2022,
        verbatimModuleSyntax: true,
        experimentalDecorators: true,
        emitDecoratorMetadata: true,
      },
    });
    const target = join(out, relative(root, file)).replace(/\.ts$/, '.js');
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, outputText.replace(/^#!.*\n/, ''));
  }
}

/** Starts `jobs` with at most `limit` running at once (the suite shares two cores). */
async function limited<T>(jobs: (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const index = next++;
      results[index] = await jobs[index]!();
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  return results;
}

describe('packaging: entry isolation', () => {
  const work = join(root, '.tmp', `isolation-${process.pid}-${Date.now()}`);
  const map = entries();
  const loaded = new Map<string, string[]>();

  beforeAll(async () => {
    transpileSources(work);
    writeFileSync(join(work, 'package.json'), '{ "type": "module" }\n');
    writeFileSync(join(work, 'hooks.mjs'), HOOKS);
    writeFileSync(join(work, 'child.mjs'), CHILD);
    const env = { ...process.env };
    delete env.NODE_OPTIONS;
    const names = [...map.keys()];
    const outputs = await limited(
      names.map((name, index) => async () => {
        const entry = pathToFileURL(join(work, map.get(name)!.replace(/\.ts$/, '.js'))).href;
        const log = join(work, `resolved-${index}.log`);
        writeFileSync(log, '');
        const args = [join(work, 'child.mjs'), entry, pathToFileURL(join(work, 'hooks.mjs')).href, log];
        const { stdout } = await run(process.execPath, args, { cwd: work, env, timeout: 60_000 }).catch(
          (error: { stderr?: string }) => {
            throw new Error(`importing ${name} failed:\n${error.stderr}`);
          },
        );
        return JSON.parse(stdout) as string[];
      }),
      3,
    );
    names.forEach((name, index) => {
      const files = outputs[index]!.map((item) => (item.startsWith('file:') ? fileURLToPath(item) : item));
      const packages = new Set(files.map(packageOf).filter((item) => item !== undefined));
      loaded.set(
        name,
        WATCHED.filter((item) => packages.has(item)),
      );
    });
  }, 120_000);

  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('Package: every public entry has an isolation rule here', () => {
    expect([...map.keys()].sort()).toEqual(Object.keys(ALLOWED).sort());
  });

  it('Package: the core entry `oncely` loads no framework, driver or gateway package', () => {
    expect(loaded.get('oncely')).toEqual([]);
  });

  it.each(Object.keys(ALLOWED))('Package: %s loads only the packages it wraps', (name) => {
    const seen = loaded.get(name);
    expect(seen, `${name} was not imported`).toBeDefined();
    expect(seen!.filter((item) => !ALLOWED[name]!.includes(item))).toEqual([]);
  });

  // A tracer that saw nothing would pass every test above: prove it sees ESM and CommonJS peers.
  it('Package: the tracer sees the peers an entry does load (ESM and CommonJS)', () => {
    expect(loaded.get('oncely/sqlite')).toContain('better-sqlite3'); // CommonJS
    expect(loaded.get('oncely/fastify')).toContain('fastify-plugin'); // CommonJS
    expect(loaded.get('oncely/testing')).toContain('vitest'); // ESM
    expect(loaded.get('oncely/gateway')).toEqual(expect.arrayContaining(['pino', 'prom-client', 'undici']));
  });
});
