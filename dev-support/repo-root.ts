import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Tests load this file from dev-support/, the benchmark from dist/dev-support/: the depths differ, so find
// the root by its package.json instead of counting '..'.
function findRepoRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) return path.resolve(here, '..');
  }
}

/** The repository root. */
export const repoRoot = findRepoRoot();
