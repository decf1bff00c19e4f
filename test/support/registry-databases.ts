// Databases on the shared cluster for the tests that work on the registry schema directly: each test makes
// its own, and the file drops them (and ends the clients opened on them) when it is done.
import pg from 'pg';
import { afterAll, inject } from 'vitest';
import { latestKnownVersion } from '../../core/migrate.js';
import {
  applyMigrations,
  createDatabase,
  createDatabaseAtVersion,
  dropDatabase,
} from '../../dev-support/postgres.js';
import { Registry } from '../../gateway/registry.js';

export function registryFor(url: string): Registry {
  return new Registry({
    databaseUrl: url,
    maxConnections: 2,
    connectTimeoutMs: 2000,
    poolAcquireTimeoutMs: 1000,
    queryTimeoutMs: 1000,
    latestKnownVersion: latestKnownVersion(),
  });
}

/** Call once at the top of a test file: registers the clean-up and returns the database makers. */
export function registryDatabases() {
  const adminUrl = inject('pgAdminUrl');
  const dbs: string[] = [];
  const clients: pg.Client[] = [];

  afterAll(async () => {
    for (const c of clients) await c.end().catch(() => {});
    for (const url of dbs) await dropDatabase(adminUrl, url);
  });

  return {
    async connect(url: string): Promise<pg.Client> {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      clients.push(c);
      return c;
    },

    async freshDb(name: string, migrated = true): Promise<string> {
      const url = await createDatabase(adminUrl, name);
      dbs.push(url);
      if (migrated) await applyMigrations(url);
      return url;
    },

    /** A database migrated only up to `version`: a registry as an older build left it. */
    async dbAtVersion(name: string, version: number): Promise<string> {
      const url = await createDatabaseAtVersion(adminUrl, name, version);
      dbs.push(url);
      return url;
    },
  };
}
