/**
 * grant-principal-scope KEY_ID DEST... [--valid-days N]: delegate destinations to a principal key. These
 * rows are not signed; they bound what the key's signatures can grant.
 */
import { normalizeDestination } from '../../core/destination.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { checkKeyId } from '../args.js';
import { databaseNow, withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, toCliError, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { lockSigningKey, type ScopeUpsert, upsertScope } from '../registry-writes.js';
import { assertSignerUsable } from './signer-state.js';

export type ScopeOptions = {
  readonly keyId: string;
  readonly destinations: readonly string[];
  readonly validDays: number;
};

export async function grantPrincipalScope(ctx: CommandContext, opts: ScopeOptions): Promise<ExitCode> {
  const keyId = checkKeyId(opts.keyId);
  const destinations = [
    ...new Set(
      opts.destinations.map((d) => {
        try {
          return normalizeDestination(d).normalized;
        } catch (err) {
          throw toCliError(err);
        }
      }),
    ),
  ];
  if (destinations.length === 0) throw new UsageError('no destination given');
  const target = databaseFromEnv(ctx.env);

  const { key, results } = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      const key = await lockSigningKey(db, keyId, 'update');
      const now = await databaseNow(db);
      assertSignerUsable(keyId, key, now.micros);
      const results: ScopeUpsert[] = [];
      for (const destination of destinations)
        results.push(await upsertScope(db, keyId, destination, opts.validDays));
      return { key: key!, results };
    }),
  );

  for (const { scope, action } of results) {
    ctx.io.out(
      `scope ${keyId} -> ${scope.destination}: ${action}, valid ${scope.notBefore} .. ${scope.notAfter}`,
    );
  }
  if (results.some((r) => parseTimestamp(r.scope.notAfter) > parseTimestamp(key.notAfter))) {
    ctx.io.err(
      `note: principal key ${keyId} itself expires at ${key.notAfter}; grants end then unless the key is re-registered`,
    );
  }
  return EXIT_OK;
}
