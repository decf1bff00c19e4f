/**
 * agent-permissions delete SUBJECT_IDENTITY SPKI [--destination D] [--expect-some]: revoke an agent key's
 * permissions. Rows are never deleted (revoked_at = now()), so the registry keeps its history and gateways
 * watching the registry close the tunnels those rows authorized.
 *
 * Revoking nothing exits 0 (re-running a revocation stays green, and an agent that was never granted
 * anything can be cleaned up the same way), but the output tells "already revoked" from "no such
 * permission at all", the likely typo; --expect-some makes revoking nothing exit 1.
 */
import { normalizeDestination } from '../../core/destination.js';
import { readSpkiInput, spkiFingerprint } from '../../core/spki-input.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, EXIT_REFUSED, type ExitCode, toCliError, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { countPermissions, revokePermissions } from '../registry-writes.js';

export type DeleteOptions = {
  readonly subjectIdentity: string;
  readonly spki: string;
  readonly destination?: string | undefined;
  /** Exit 1 when nothing was revoked. */
  readonly expectSome?: boolean | undefined;
  readonly json: boolean;
};

export async function deletePermissions(ctx: CommandContext, opts: DeleteOptions): Promise<ExitCode> {
  if (opts.subjectIdentity === '') throw new UsageError('SUBJECT_IDENTITY is empty');
  let spkiDer: Buffer;
  let destination: string | undefined;
  try {
    spkiDer = readSpkiInput(opts.spki).spkiDer;
    destination =
      opts.destination === undefined ? undefined : normalizeDestination(opts.destination).normalized;
  } catch (err) {
    const cli = toCliError(err);
    throw new UsageError(cli.message, { cause: err });
  }
  const target = databaseFromEnv(ctx.env);
  const { revoked, total } = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      const revoked = await revokePermissions(db, opts.subjectIdentity, spkiDer, destination);
      // Every row for the key (and destination), now all revoked: the ones revoked before this run, if any.
      const total = await countPermissions(db, opts.subjectIdentity, spkiDer, destination);
      return { revoked, total };
    }),
  );
  const alreadyRevoked = total - revoked.length;
  const exitCode = revoked.length === 0 && opts.expectSome === true ? EXIT_REFUSED : EXIT_OK;

  if (opts.json) {
    ctx.io.out(
      JSON.stringify({
        revoked: revoked.length,
        already_revoked: alreadyRevoked,
        permissions: revoked.map((p) => ({
          permission_id: p.permissionId,
          destination: p.destination,
          signing_key_id: p.signingKeyId,
          revoked_at: p.revokedAt,
        })),
      }),
    );
  } else {
    const who = `${opts.subjectIdentity} (agent public key sha256 ${spkiFingerprint(spkiDer)})`;
    const where = destination === undefined ? '' : ` for ${destination}`;
    if (revoked.length === 0) {
      ctx.io.out(
        alreadyRevoked === 0
          ? `revoked 0 permissions: no permission of ${who}${where} exists, revoked or not`
          : `revoked 0 permissions: the ${alreadyRevoked === 1 ? 'permission' : `${alreadyRevoked} permissions`} ` +
              `of ${who}${where} ${alreadyRevoked === 1 ? 'was' : 'were'} already revoked`,
      );
    } else {
      ctx.io.out(`revoked ${revoked.length} permission${revoked.length === 1 ? '' : 's'} of ${who}${where}:`);
      for (const p of revoked) {
        ctx.io.out(
          `  ${p.permissionId} -> ${p.destination} (signed by ${p.signingKeyId}), revoked at ${p.revokedAt}`,
        );
      }
    }
  }
  if (total === 0) {
    ctx.io.err(
      `note: nothing in the registry matches identity ${JSON.stringify(opts.subjectIdentity)} with this agent key` +
        `${destination === undefined ? '' : ` and ${destination}`}: check them for a typo` +
        (opts.expectSome === true ? '' : ' (--expect-some makes this exit 1)'),
    );
  }
  return exitCode;
}
