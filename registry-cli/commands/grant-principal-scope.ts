/**
 * grant-principal-scope KEY_ID DEST... [--valid-days N]: delegate destinations to a principal key. These
 * rows bound what the key's signatures can grant. With --root-key each row is signed by that root, after
 * checking it lies within the key's window; without it, a root-signed row is never changed (that would
 * void its signature).
 */

import { normalizeDestination } from '../../core/destination.js';
import { spkiFingerprint } from '../../core/spki-input.js';
import { MICROS_PER_DAY, type Micros, parseTimestamp } from '../../core/timestamp.js';
import { checkKeyId } from '../args.js';
import { databaseNow, withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, toCliError, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { lockSigningKey, type ScopeUpsert, upsertScope } from '../registry-writes.js';
import { refuseVoidingScopeSignature, rootSignScope } from '../root-sign.js';
import { assertSignerUsable } from './signer-state.js';

const DEFAULT_DAYS = 365;

/**
 * A rooted scope must lie within its key's window (the gateway denies scope_not_rooted otherwise), so
 * without --valid-days it ends with the key, in whole days (at least 1; a key ending sooner is refused
 * with both windows named).
 */
function defaultDays(rootKeyId: string | undefined, keyNotAfter: string, now: Micros): number {
  if (rootKeyId === undefined) return DEFAULT_DAYS;
  const left = (parseTimestamp(keyNotAfter) - now) / MICROS_PER_DAY;
  return Number(left < 1n ? 1n : left > BigInt(DEFAULT_DAYS) ? BigInt(DEFAULT_DAYS) : left);
}

export type ScopeOptions = {
  readonly keyId: string;
  readonly destinations: readonly string[];
  /** Days from now; undefined = 365, or with --root-key until the key's own not_after (at most 365). */
  readonly validDays: number | undefined;
  /** Root-sign each scope row (docs/contract.md "Root of trust"). */
  readonly rootKeyId?: string | undefined;
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
      const days = opts.validDays ?? defaultDays(opts.rootKeyId, key!.notAfter, now.micros);
      for (const destination of destinations) {
        const r = await upsertScope(db, keyId, destination, days);
        if (opts.rootKeyId === undefined) {
          await refuseVoidingScopeSignature(db, r.action === 'extended', r.scope);
        } else {
          await rootSignScope(ctx.env, db, r.scope.id, opts.rootKeyId, days);
        }
        results.push(r);
      }
      return { key: key!, results };
    }),
  );

  for (const { scope, action } of results) {
    ctx.io.out(
      `scope ${keyId} -> ${scope.destination}: ${action}, valid ${scope.notBefore} .. ${scope.notAfter}` +
        (opts.rootKeyId === undefined
          ? ''
          : `, signed by root ${opts.rootKeyId} for public key sha256 ${spkiFingerprint(key.spkiDer)}`),
    );
  }
  if (results.some((r) => parseTimestamp(r.scope.notAfter) > parseTimestamp(key.notAfter))) {
    ctx.io.err(
      `note: principal key ${keyId} itself expires at ${key.notAfter}; grants end then unless the key is re-registered`,
    );
  }
  return EXIT_OK;
}
