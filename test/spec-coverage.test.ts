import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

describe('SPEC coverage', () => {
  it('every SPEC rule is named by at least one test and listed in docs/spec-coverage.md', () => {
    const script = fileURLToPath(new URL('../scripts/spec-coverage.mjs', import.meta.url));
    expect(() => execFileSync(process.execPath, [script, '--check'], { stdio: 'pipe' })).not.toThrow();
  });
});
