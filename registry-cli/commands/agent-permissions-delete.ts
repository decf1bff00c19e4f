/**
 * agent-permissions delete SUBJECT_IDENTITY SPKI [--destination D]: revoke an agent key's permissions.
 * Rows are never deleted (revoked_at = now()), so the registry keeps its history and gateways watching
 * the registry close the tunnels those rows authorized.
 */
import { normalizeDestination } from '../../core/destination.js';
import { readSpkiInput, spkiFingerprint } from '../../core/spki-input.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, toCliError, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { revokePermissions } from '../registry-writes.js';

export type DeleteOptions = {
  readonly subjectIdentity: string;
  readonly spki: string;
  readonly destination?: string | undefined;
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
  const revoked = await withRegistry(target, (registry) =>
    registry.transaction((db) => revokePermissions(db, opts.subjectIdentity, spkiDer, destination)),
  );

  if (opts.json) {
    ctx.io.out(
      JSON.stringify({
        revoked: revoked.length,
        permissions: revoked.map((p) => ({
          permission_id: p.permissionId,
          destination: p.destination,
          signing_key_id: p.signingKeyId,
          revoked_at: p.revokedAt,
        })),
      }),
    );
    return EXIT_OK;
  }
  const who = `${opts.subjectIdentity} (agent public key sha256 ${spkiFingerprint(spkiDer)})`;
  const where = destination === undefined ? '' : ` for ${destination}`;
  if (revoked.length === 0) {
    ctx.io.out(`revoked 0 permissions: no active permission of ${who}${where}`);
    return EXIT_OK;
  }
  ctx.io.out(`revoked ${revoked.length} permission${revoked.length === 1 ? '' : 's'} of ${who}${where}:`);
  for (const p of revoked) {
    ctx.io.out(
      `  ${p.permissionId} -> ${p.destination} (signed by ${p.signingKeyId}), revoked at ${p.revokedAt}`,
    );
  }
  return EXIT_OK;
}
