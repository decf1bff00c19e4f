// vitest globalSetup: ONE PostgreSQL cluster for the whole run (unless TEST_DATABASE_URL is set), torn down
// at the end. Tests get its superuser URL with `inject('pgAdminUrl')` and should create their own database
// with `createMigratedDatabase(inject('pgAdminUrl'), 'my_file')` (or `createDatabase`), so files run in
// parallel.
//
// Do NOT stop the shared cluster from a test: other files use it concurrently. A test that needs the database
// to go down and come back starts its OWN cluster:
//   const pg = await startPostgres(); ... await pg.stop(); ... await pg.start(); ... await pg.destroy();
// pgDataDir / pgBinDir / pgPort describe the shared cluster for diagnostics only ('' with TEST_DATABASE_URL).
import type { TestProject } from 'vitest/node';
import { startPostgres } from '../../dev-support/postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    pgAdminUrl: string;
    pgDataDir: string;
    pgBinDir: string;
    pgPort: number;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const pg = await startPostgres({ externalUrl: process.env['TEST_DATABASE_URL'] });
  project.provide('pgAdminUrl', pg.url);
  project.provide('pgDataDir', pg.dataDir);
  project.provide('pgBinDir', pg.binDir);
  project.provide('pgPort', pg.port);
  return async () => {
    await pg.destroy();
  };
}
