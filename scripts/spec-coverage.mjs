#!/usr/bin/env node
// Regenerates docs/spec-coverage.md: every SPEC rule and the tests that name it.
// `node scripts/spec-coverage.mjs --check` fails when a rule has no test or the page misses a rule.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

export const RULES = {
  K1: 'header `Idempotency-Key`, case-insensitive',
  K2: 'bare token or sf-string, whitespace ignored',
  K3: '8–255 of `A-Z a-z 0-9 - _`, else 400',
  K4: 'several keys → 400',
  K5: 'keys are case-sensitive',
  K6: 'keys ignored unread where they do not take effect',
  M1: 'keys take effect on POST and PATCH (`methods`)',
  M2: 'other methods pass; `onSafeMethodKey`',
  M3: 'no key passes; `required`',
  F1: 'fingerprint = SHA-256 of method, path+query, Content-Type, body',
  F2: 'same key, other fingerprint → 422, checked before the lock',
  R1: 'first request runs; every outcome recorded (`record`)',
  R2: 'replays: same status, body, end-to-end headers + `Idempotent-Replayed`',
  R3: 'handler errors recorded as the error response; broken streams as 500',
  R4: "oncely's own answers are never recorded",
  R5: 'byte-exact replay for every status and body',
  R6: 'recorded before the response is released',
  R7: '413 over `maxRequestBytes`; large or streamed responses replayed without body',
  L1: 'in flight holds the lock',
  L2: 'duplicate in flight → 409 + Retry-After (`onInFlight`)',
  L3: 'lease renewed while running; taken over after it runs out',
  L4: 'fencing tokens: stale owners cannot write',
  L5: 'exactly one execution across requests, processes, machines',
  T1: 'completed records kept `ttlMs`; in-flight never purged while leased',
  T2: 'expired records removed lazily and by a sweep proportional to what expired',
  S1: 'default scope = SHA-256 of Authorization (`scope`)',
  S2: 'store errors → 503, nothing runs (`onStoreError`)',
  S3: 'never more than 8 characters of a key in logs',
  P1: 'RFC 9457 problems with stable codes, `no-store`',
  G1: 'the gateway applies every rule',
  G2: 'refused → 502 unrecorded; failed/timed out after sending → recorded 502/504',
  G3: 'unkeyed traffic and other methods streamed through',
  C1: 'client: one UUID v4 key per operation, reused on retries',
  C2: 'client: what it retries and never retries',
  C3: 'client: keys only on POST and PATCH',
};

const TITLE = /['"`]((?:[KMFRLTSPGC]\d+)(?:\s*,\s*[KMFRLTSPGC]\d+)*):\s*([^'"`]*)/g;

function* files(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === 'node_modules' || entry.name === 'dist') continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (/\.(test\.ts|ts)$/.test(entry.name)) yield path;
  }
}

/** Rule ID → [{ file, line, title }] for every test title that names it. */
export function collect() {
  const proofs = new Map(Object.keys(RULES).map((id) => [id, []]));
  const sources = [...files(join(root, 'src')), ...files(join(root, 'test'))].filter(
    (f) => f.endsWith('.test.ts') || f.endsWith('suite.ts') || f.endsWith('testing.ts'),
  );
  for (const file of sources.sort()) {
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.forEach((text, index) => {
      if (!/\bit(\.each|\.skipIf|\.runIf)?\b|^\s*\[?['"`]/.test(text) && !/\bit\(/.test(text)) return;
      for (const match of text.matchAll(TITLE)) {
        for (const id of match[1].split(/\s*,\s*/)) {
          proofs
            .get(id)
            ?.push({ file: relative(root, file), line: index + 1, title: `${match[1]}: ${match[2]}` });
        }
      }
    });
  }
  return proofs;
}

export function render(proofs) {
  const out = [
    '# SPEC coverage',
    '',
    'Every rule of the behaviour contract (`SPEC.md`) and the tests that prove it, found by the rule ID',
    "each test names (`it('K3: …')`). Shared suites run many times: the HTTP conformance suite",
    '(`test/conformance/suite.ts`) against every adapter and store, the store contract (`src/testing.ts`)',
    'against every store. Regenerate with `node scripts/spec-coverage.mjs`; `npm test` fails when a rule',
    'has no test or is missing here.',
    '',
    '| rule | what | tests | where |',
    '|---|---|---|---|',
  ];
  for (const [id, summary] of Object.entries(RULES)) {
    const list = proofs.get(id);
    const byFile = new Map();
    for (const proof of list) byFile.set(proof.file, (byFile.get(proof.file) ?? 0) + 1);
    const where = [...byFile].map(([file, n]) => `[${file}](../${file}) (${n})`).join('<br>');
    out.push(`| ${id} | ${summary} | ${list.length} | ${where || '**none**'} |`);
  }
  out.push('');
  return out.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const proofs = collect();
  const text = render(proofs);
  const target = join(root, 'docs', 'spec-coverage.md');
  if (process.argv.includes('--check')) {
    const missing = [...proofs].filter(([, list]) => list.length === 0).map(([id]) => id);
    if (missing.length) {
      console.error(`rules without a test: ${missing.join(', ')}`);
      process.exit(1);
    }
    // The per-file counts drift with every new test; what must hold is that the page lists every rule.
    const page = readFileSync(target, 'utf8');
    const unlisted = Object.keys(RULES).filter((id) => !page.includes(`| ${id} |`));
    if (unlisted.length) {
      console.error(
        `docs/spec-coverage.md does not list ${unlisted.join(', ')}: run node scripts/spec-coverage.mjs`,
      );
      process.exit(1);
    }
  } else {
    writeFileSync(target, text);
    console.log(`wrote ${relative(root, target)}`);
  }
}
