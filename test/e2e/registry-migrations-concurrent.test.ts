// Roles are cluster-wide, the migration lock is per database: several registries of one fresh cluster
// migrated at the same moment race on CREATE ROLE (core/migrate.ts ROLE_RACE_RETRIES). Its own cluster,
// because the shared one already has the roles and cannot race any more.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listMigrations, migrate } from '../../core/migrate.js';
import { createDatabase, type PgHandle, startPostgres } from '../../dev-support/postgres.js';

const REGISTRIES = 8;
let pg: PgHandle;

beforeAll(async () => {
  pg = await startPostgres();
}, 60_000);

afterAll(async () => {
  await pg?.destroy();
});

describe('migrations of several registries in one cluster at once', () => {
  it('all succeed: a CREATE ROLE that loses the race is run again, not reported', async () => {
    const urls = await Promise.all(
      Array.from({ length: REGISTRIES }, (_, i) => createDatabase(pg.url, `reg_concurrent_${i}`)),
    );
    const results = await Promise.allSettled(urls.map((url) => migrate(url)));
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []));
    expect(failures).toEqual([]);
    for (const r of results) {
      expect(r.status === 'fulfilled' ? r.value : []).toEqual(listMigrations().map((m) => m.name));
    }
  }, 120_000);
});
