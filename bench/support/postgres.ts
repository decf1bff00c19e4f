/**
 * The database of one bench run: a fresh database with the project's migrations, in a throwaway cluster
 * (dev-support/postgres.ts), or on the server BENCH_DATABASE_URL names (a superuser URL), where it is dropped
 * again at the end.
 */
import { createDatabase, dropDatabase, startPostgres } from '../../dev-support/postgres.js';

export type BenchPostgres = {
  /** URL of a fresh database with the project's migrations applied. */
  readonly databaseUrl: string;
  stop(): Promise<void>;
};

export async function startBenchPostgres(migrate: (url: string) => Promise<unknown>): Promise<BenchPostgres> {
  const server = await startPostgres({ externalUrl: process.env['BENCH_DATABASE_URL'] });
  try {
    const databaseUrl = await createDatabase(server.url, 'agw_bench');
    await migrate(databaseUrl);
    return {
      databaseUrl,
      async stop() {
        if (server.external) await dropDatabase(server.url, databaseUrl);
        await server.destroy();
      },
    };
  } catch (err) {
    await server.destroy();
    throw err;
  }
}
