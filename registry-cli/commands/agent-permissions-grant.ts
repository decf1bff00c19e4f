/**
 * agent-permissions grant KEY_ID SUBJECT_IDENTITY SPKI DEST [VALID_DAYS] [PERMISSION_ID]: the principal
 * key in the TPM signs one permission row and the row is written, all in one transaction that is
 * committed only when the gateway's own policy code, run against the row as written, allows it
 * (registry-cli/sign-permission.ts, which `approve` shares). A new row does not replace other active rows
 * for the same identity, key and destination; a note names them. Passing the PERMISSION_ID of an active
 * row renews it.
 */
import { normalizeDestination } from '../../core/destination.js';
import { identityLengthError } from '../../core/identity-extension.js';
import { assertP256Spki, readSpkiInput, spkiFingerprint } from '../../core/spki-input.js';
import { signerOptionsFromEnv } from '../../pkcs11/signer-options.js';
import { checkField, checkKeyId } from '../args.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, toCliError, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { grantNotes, PrincipalSigner, signPermission } from '../sign-permission.js';

export type GrantOptions = {
  readonly keyId: string;
  readonly subjectIdentity: string;
  /** File (PEM/DER SPKI or certificate) or hex. */
  readonly spki: string;
  readonly destination: string;
  readonly validDays: number;
  readonly permissionId?: string | undefined;
  readonly json: boolean;
};

export async function grantPermission(ctx: CommandContext, opts: GrantOptions): Promise<ExitCode> {
  const keyId = checkKeyId(opts.keyId);
  const subjectIdentity = checkField('SUBJECT_IDENTITY', opts.subjectIdentity);
  const tooLong = identityLengthError(subjectIdentity);
  if (tooLong !== undefined)
    throw new UsageError(`SUBJECT_IDENTITY: ${tooLong}; the gateway would never allow it`);
  const permissionId =
    opts.permissionId === undefined ? undefined : checkField('PERMISSION_ID', opts.permissionId);
  let destination: string;
  let subjectSpkiDer: Buffer;
  try {
    destination = normalizeDestination(opts.destination).normalized;
    subjectSpkiDer = readSpkiInput(opts.spki).spkiDer;
    // Also checked by signPermission; here so that the refusal needs no database.
    assertP256Spki(subjectSpkiDer);
  } catch (err) {
    throw toCliError(err);
  }
  const target = databaseFromEnv(ctx.env);
  const signer = new PrincipalSigner(signerOptionsFromEnv(keyId, ctx.env));

  let outcome: Awaited<ReturnType<typeof signPermission>>;
  try {
    outcome = await withRegistry(target, (registry) =>
      registry.transaction((db) =>
        signPermission(db, signer, {
          keyId,
          subjectIdentity,
          subjectSpkiDer,
          destination,
          validity: { days: opts.validDays },
          permissionId,
          shorterWindowHint: (days) => `use VALID_DAYS of at most ${days}`,
        }),
      ),
    );
  } finally {
    signer.close();
  }

  const { row } = outcome;
  if (opts.json) {
    ctx.io.out(
      JSON.stringify({
        permission_id: row.permissionId,
        action: outcome.action,
        renews: outcome.renewed?.permissionId ?? null,
        signing_key_id: row.signingKeyId,
        subject_identity: row.subjectIdentity,
        subject_public_key_spki_der: row.subjectSpkiDer.toString('hex'),
        destination: row.destination,
        not_before: row.notBefore,
        not_after: row.notAfter,
        signature: row.signature.toString('hex'),
        other_active_permissions: outcome.others.map((p) => ({
          permission_id: p.permissionId,
          not_after: p.notAfter,
        })),
      }),
    );
  } else {
    const as = outcome.renewed === undefined ? '' : `${outcome.renewed.permissionId} as `;
    ctx.io.out(
      `${outcome.action} permission ${as}${row.permissionId}: ${row.subjectIdentity} -> ${row.destination}, signed by ${row.signingKeyId}`,
    );
    ctx.io.out(`  agent public key sha256: ${spkiFingerprint(row.subjectSpkiDer)}`);
    ctx.io.out(`  valid: ${row.notBefore} .. ${row.notAfter}`);
    ctx.io.out("  verified with the gateway's policy: allowed");
    if (outcome.renewed !== undefined) {
      ctx.io.out(
        `  ${outcome.renewed.permissionId} revoked at ${outcome.renewed.revokedAt}: a signed row never changes, ` +
          'a renewal is a new signed row',
      );
    }
  }
  for (const note of grantNotes(outcome)) ctx.io.err(note);
  return EXIT_OK;
}
