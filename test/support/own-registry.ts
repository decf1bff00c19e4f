// A registry on its own PostgreSQL cluster, for gateway tests that stop the database or load it hard enough
// that they should not share one: a migrated database, and one carrier per identity, each granted every
// destination by one principal.
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, type PgHandle, startPostgres } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';

export type OwnRegistry = { readonly pg: PgHandle; readonly dbUrl: string; readonly carriers: Carrier[] };

export async function startOwnRegistry(opts: {
  readonly dbName: string;
  readonly principalId: string;
  readonly identities: readonly string[];
  readonly destinations: readonly string[];
}): Promise<OwnRegistry> {
  const pg = await startPostgres();
  const dbUrl = await createMigratedDatabase(pg.url, opts.dbName);
  const carriers = await Promise.all(opts.identities.map((id) => createCarrier(id)));
  const principal = createPrincipalKey();
  for (const c of carriers) {
    for (const destination of opts.destinations) {
      await grant(dbUrl, {
        principalId: opts.principalId,
        principal,
        identity: c.identity,
        subjectSpkiDer: c.spkiDer,
        destination,
      });
    }
  }
  return { pg, dbUrl, carriers };
}
