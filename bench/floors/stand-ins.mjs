/**
 * Builds stand-in copies of ../../dist for `frameworks.mjs --compare`, each with one part of oncely
 * taken out, to show where a new key's cost goes on Express and Fastify. Written to
 * bench/results/stand-ins/<name>/ (node resolves the adapters' imports from the checkout). Prints
 * the `--compare=` argument.
 *
 *   npm run build && node bench/floors/stand-ins.mjs
 *   node bench/frameworks.mjs --only=express,fastify --layers=none,oncely --scenarios=new --rounds=12 --compare=<printed>
 *
 * | name | what differs from oncely |
 * |---|---|
 * | capture | Express only: no engine; keyed responses are captured and released at once (`next()` in the same tick) |
 * | peek | Express only: as capture, plus the body peek and two promise hops before `next()` |
 * | nostore | the real engine against a store that keeps nothing and answers at once |
 * | noretain | a store that keeps a record only while it is in flight (a Map insert, then a delete) |
 * | shared-response | the real MemoryStore, keeping every record, but one shared response for all of them |
 */
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', '..', 'dist');
const out = join(here, '..', 'results', 'stand-ins');

/** Replace `from` with `to` in one built file; fails loudly when the build no longer has `from`. */
function patch(root, file, from, to) {
  const path = join(root, file);
  const text = readFileSync(path, 'utf8');
  if (!text.includes(from))
    throw new Error(`${file}: "${from}" not found; update stand-ins.mjs for this build`);
  writeFileSync(path, text.replace(from, to));
}

const noopExecution = `const noopExecution = { maxResponseBytes: 1 << 20, streams: () => false,
  complete: (response) => Promise.resolve(response), completeWithoutBody: () => Promise.resolve(),
  fail: () => Promise.resolve({ status: 500, headers: {}, body: new Uint8Array(0) }) };`;

const stores = {
  nostore: `{ acquire: () => ACQUIRED, complete: () => true, renew: () => true, release: () => true,
    get: () => undefined, sweep: async () => 0, close: async () => {} }`,
  noretain: `(() => { const held = new Map(); return {
    acquire: (i) => { const r = held.get(i.key); if (r) return { state: 'in-flight', fingerprint: r.fingerprint };
      held.set(i.key, { fingerprint: i.fingerprint, token: i.token }); return ACQUIRED; },
    complete: (_s, k, t) => { const r = held.get(k); if (!r || r.token !== t) return false; held.delete(k); return true; },
    renew: () => true, release: (_s, k) => held.delete(k), get: () => undefined, sweep: async () => 0, close: async () => {} }; })()`,
};

const standIns = {
  capture(root) {
    writeFileSync(
      join(root, 'adapters', 'express.js'),
      `import { captureResponse } from './_node-http.js';
${noopExecution}
export function idempotency() {
  return function captureOnly(req, res, next) {
    if (req.headers['idempotency-key'] === undefined) return next();
    captureResponse(res, noopExecution);
    next();
  };
}
`,
    );
  },
  peek(root) {
    writeFileSync(
      join(root, 'adapters', 'express.js'),
      `import { captureResponse, NodeRequest } from './_node-http.js';
${noopExecution}
export function idempotency() {
  return function peekAndCapture(req, res, next) {
    if (req.headers['idempotency-key'] === undefined) return next();
    const request = new NodeRequest(req, req, req.originalUrl, () => req.body);
    Promise.resolve(request.readBody(1 << 20))
      .then(() => undefined)
      .then(() => {
        captureResponse(res, noopExecution);
        next();
      });
  };
}
`,
    );
  },
  nostore(root) {
    withStore(root, stores.nostore);
  },
  noretain(root) {
    withStore(root, stores.noretain);
  },
  'shared-response'(root) {
    patch(root, 'stores/memory.js', 'record.response = response;', 'record.response = SHARED_RESPONSE;');
    patch(
      root,
      'stores/memory.js',
      '/**\n * A store in this process',
      'const SHARED_RESPONSE = { status: 201, headers: {}, body: new Uint8Array(0), bodyOmitted: false };\n/**\n * A store in this process',
    );
  },
};

function withStore(root, store) {
  const declare = `const ACQUIRED = Object.freeze({ state: 'acquired' }); const standInStore = ${store};`;
  patch(
    root,
    'adapters/express.js',
    'const engine = new Engine(options);',
    `${declare}\n    const engine = new Engine({ ...options, store: standInStore });`,
  );
  patch(
    root,
    'adapters/fastify.js',
    'const engine = new Engine(base);',
    `${declare}\n    const engine = new Engine({ ...base, store: standInStore });`,
  );
}

rmSync(out, { recursive: true, force: true });
const built = [];
for (const [name, apply] of Object.entries(standIns)) {
  const root = join(out, name);
  cpSync(dist, root, { recursive: true });
  apply(root);
  built.push(root);
}
console.log(`--compare=${built.join(',')}`);
