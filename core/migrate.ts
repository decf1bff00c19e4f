/**
 * Applies migrations/NNNN_*.sql in order, each in its own transaction, under an advisory lock so two
 * runners cannot interleave. A version already recorded in agent_gateway_schema_version is never
 * applied again; each file records its own version row (0001 creates the table), and the runner checks
 * that it did.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { errorText } from './error-text.js';
import { fetchSchemaVersion as currentVersion } from './registry-queries.js';

export type Migration = { readonly version: number; readonly name: string; readonly path: string };

const FILE = /^(\d{4})_[a-z0-9_]+\.sql$/;
// Any 64-bit constant; only runners of this project take it.
const ADVISORY_LOCK_KEY = 5726400011n;

export function migrationsDir(): string {
  // core/ and dist/core/ both sit below the repository root, which holds migrations/.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, 'migrations');
    try {
      readdirSync(candidate);
      return candidate;
    } catch {
      dir = resolve(dir, '..');
    }
  }
  throw new Error('migrations/ directory not found next to the program');
}

export function listMigrations(dir = migrationsDir()): Migration[] {
  const found = readdirSync(dir)
    .filter((f) => f.endsWith('.sql'))
    .map((f) => {
      const m = FILE.exec(f);
      if (m === null)
        throw new Error(`migration file name ${JSON.stringify(f)} must look like NNNN_name.sql`);
      return { version: Number(m[1]), name: f, path: join(dir, f) };
    })
    .sort((a, b) => a.version - b.version);
  found.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(`migrations must be numbered 1..N without gaps; found ${m.name} at position ${i + 1}`);
  });
  return found;
}

/** Highest version this build knows: the gateway refuses registries newer than this. */
export function latestKnownVersion(dir?: string): number {
  return listMigrations(dir).at(-1)?.version ?? 0;
}

/**
 * Roles are cluster-wide and the advisory lock is per database: two registries in one cluster migrated
 * at the same moment can both find a role missing, and the second CREATE ROLE then fails with
 * unique_violation on pg_authid. Its transaction rolled back whole, so running it again (now finding
 * the role) is exactly what a serial run would have done.
 */
const ROLE_RACE_RETRIES = 3;

async function applyOne(client: pg.Client, m: Migration, retries: number): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query(readFileSync(m.path, 'utf8'));
    const after = await currentVersion(client);
    if (after !== m.version) throw new Error(`${m.name} did not record schema version ${m.version}`);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK');
    const e = err as { code?: string; constraint?: string; message?: string };
    const roleRace =
      e.code === '23505' &&
      (e.constraint === 'pg_authid_rolname_index' || e.message?.includes('pg_authid_rolname_index') === true);
    if (roleRace && retries > 0) return applyOne(client, m, retries - 1);
    throw new Error(`migration ${m.name} failed: ${errorText(err)}`);
  }
}

/** Apply what is missing; returns the file names applied (empty when up to date). */
export async function migrate(databaseUrl: string, dir?: string): Promise<string[]> {
  const migrations = listMigrations(dir);
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const applied: string[] = [];
  try {
    await client.query('SELECT pg_advisory_lock($1)', [ADVISORY_LOCK_KEY.toString()]);
    const current = await currentVersion(client);
    const latest = migrations.at(-1)?.version ?? 0;
    if (current > latest) {
      throw new Error(
        `database schema version ${current} is newer than the newest migration here (${latest})`,
      );
    }
    for (const m of migrations.filter((x) => x.version > current)) {
      await applyOne(client, m, ROLE_RACE_RETRIES);
      applied.push(m.name);
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [ADVISORY_LOCK_KEY.toString()]).catch(() => {});
    await client.end();
  }
  return applied;
}
