/**
 * agent-permissions grant KEY_ID SUBJECT_IDENTITY SPKI DEST [VALID_DAYS] [PERMISSION_ID]: the principal
 * key in the TPM signs one permission row and the row is written, all in one transaction that is
 * committed only when the gateway's own policy code, run against the row as written, allows it. A new row
 * does not replace other active rows for the same identity, key and destination; a note names them.
 * Passing the PERMISSION_ID of an active row renews it: a written row never changes (docs/contract.md
 * "A revocation is final"), so the renewal is a new signed row under a new id and the old row is revoked
 * in the same transaction.
 */
import { randomUUID } from 'node:crypto';
import { normalizeDestination } from '../../core/destination.js';
import { identityLengthError } from '../../core/identity-extension.js';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import { decide, evaluateCandidate } from '../../core/policy.js';
import { fetchActiveCandidates } from '../../core/registry-queries.js';
import { assertP256Spki, readSpkiInput, spkiFingerprint } from '../../core/spki-input.js';
import { MICROS_PER_DAY, parseTimestamp } from '../../core/timestamp.js';
import { openSigner } from '../../pkcs11/signer.js';
import { signerOptionsFromEnv } from '../../pkcs11/signer-options.js';
import { checkField, checkKeyId } from '../args.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, Refusal, toCliError, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import {
  activeScopes,
  grantWindow,
  insertPermission,
  lockPermission,
  lockSigningKey,
  otherActivePermissions,
  type PermissionRecord,
  revokePermission,
  type SignedPermission,
} from '../registry-writes.js';
import { verifySignature } from '../verify.js';
import { assertSignerUsable } from './signer-state.js';

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
  const requestedId = checkField('PERMISSION_ID', opts.permissionId ?? `perm-${randomUUID()}`);
  let destination: string;
  let subjectSpkiDer: Buffer;
  try {
    destination = normalizeDestination(opts.destination).normalized;
    subjectSpkiDer = readSpkiInput(opts.spki).spkiDer;
    assertP256Spki(subjectSpkiDer);
  } catch (err) {
    throw toCliError(err);
  }
  const target = databaseFromEnv(ctx.env);
  const signerOptions = signerOptionsFromEnv(keyId, ctx.env);

  const outcome = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      const window = await grantWindow(db, opts.validDays);
      const now = parseTimestamp(window.notBefore);
      const notAfter = parseTimestamp(window.notAfter);

      const key = await lockSigningKey(db, keyId, 'share');
      assertSignerUsable(keyId, key, now);

      const scopes = await activeScopes(db, keyId, undefined, window);
      const scope = scopes.find((s) => s.destination === destination);
      if (scope === undefined) {
        const granted = scopes.map((s) => s.destination);
        throw new Refusal(
          `${destination} is outside the scope of principal key ${keyId} ` +
            `(active scope: ${granted.length === 0 ? 'none' : [...new Set(granted)].join(', ')}); ` +
            `delegate it first: grant-principal-scope.sh ${keyId} ${destination}`,
        );
      }
      const scopeNotBefore = parseTimestamp(scope.notBefore);
      const scopeNotAfter = parseTimestamp(scope.notAfter);
      if (scopeNotBefore > now || scopeNotAfter < notAfter) {
        const maxDays = scopeNotAfter > now ? (scopeNotAfter - now) / MICROS_PER_DAY : 0n;
        throw new Refusal(
          `the grant window ${window.notBefore} .. ${window.notAfter} is outside the scope window ` +
            `${scope.notBefore} .. ${scope.notAfter} of principal key ${keyId} for ${destination}: ` +
            (scopeNotBefore > now || maxDays < 1n
              ? 'extend the scope with grant-principal-scope.sh'
              : `use VALID_DAYS of at most ${maxDays}, or extend the scope with grant-principal-scope.sh`),
        );
      }

      const previous = await lockPermission(db, requestedId);
      if (previous?.revokedAt != null) {
        throw new Refusal(
          `permission ${requestedId} was revoked at ${previous.revokedAt}; revoked rows are kept as history, ` +
            'choose another PERMISSION_ID',
        );
      }
      if (
        previous !== undefined &&
        (previous.signingKeyId !== keyId ||
          previous.subjectIdentity !== subjectIdentity ||
          !previous.subjectSpkiDer.equals(subjectSpkiDer) ||
          previous.destination !== destination)
      ) {
        throw new Refusal(
          `permission ${requestedId} already grants ${previous.subjectIdentity} -> ${previous.destination} ` +
            `(signed by ${previous.signingKeyId}); an id can only be renewed for the same key, identity, ` +
            'public key and destination: choose another PERMISSION_ID',
        );
      }

      const permissionId = previous === undefined ? requestedId : `perm-${randomUUID()}`;
      // Rows this grant does not replace: the admin should know they keep allowing access.
      const others = await otherActivePermissions(
        db,
        subjectIdentity,
        subjectSpkiDer,
        destination,
        requestedId,
      );

      const message = canonicalPermissionBytes({
        permissionId,
        signingKeyId: keyId,
        subjectIdentity,
        subjectSpkiDer,
        destination,
        notBefore: now,
        notAfter,
      });
      const signer = openSigner(signerOptions);
      let signature: Buffer;
      try {
        if (!signer.spkiDer.equals(key.spkiDer)) {
          throw new Refusal(
            `the TPM key labelled ${keyId} in token "${signerOptions.tokenLabel}" (sha256 ${spkiFingerprint(signer.spkiDer)}) ` +
              `is not the key registered for ${keyId} (sha256 ${spkiFingerprint(key.spkiDer)})`,
          );
        }
        signature = signer.sign(message);
      } finally {
        signer.close();
      }

      const row: SignedPermission = {
        permissionId,
        signingKeyId: keyId,
        subjectIdentity,
        subjectSpkiDer,
        destination,
        notBefore: window.notBefore,
        notAfter: window.notAfter,
        signature,
      };
      if (!(await insertPermission(db, row))) {
        throw new Refusal(`permission ${permissionId} was written concurrently; nothing was written`);
      }
      // The lock taken by lockPermission keeps the renewed row active until this revocation.
      const renewedRevokedAt = previous === undefined ? undefined : await revokePermission(db, requestedId);
      const action = previous === undefined ? 'created' : 'renewed';

      // The gateway's own query and policy, against the row as written, before it becomes visible.
      const request = { identity: subjectIdentity, spkiDer: subjectSpkiDer, destination };
      const candidates = await fetchActiveCandidates(db, request, now);
      const written = candidates.find((c) => c.permission.permissionId === permissionId);
      if (written === undefined) {
        throw new Refusal(
          `permission ${permissionId} would not be among the rows the gateway considers for ` +
            `${subjectIdentity} -> ${destination}; nothing was written`,
        );
      }
      const verdict = evaluateCandidate(request, written, now, verifySignature);
      const decision = decide(request, candidates, now, verifySignature);
      if (!verdict.ok || !decision.allow) {
        const why = verdict.ok ? 'the gateway would still deny' : `${verdict.reason}: ${verdict.detail}`;
        throw new Refusal(
          `the gateway would not honour permission ${permissionId} (${why}); nothing was written`,
        );
      }
      return {
        row,
        action,
        renewed:
          previous === undefined ? undefined : { permissionId: requestedId, revokedAt: renewedRevokedAt },
        validUntil: verdict.validUntil,
        keyNotAfter: key.notAfter,
        others,
      };
    }),
  );

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
  if (outcome.others.length > 0) ctx.io.err(otherRowsNote(row, outcome.others));
  if (parseTimestamp(outcome.keyNotAfter) < parseTimestamp(row.notAfter)) {
    ctx.io.err(
      `note: principal key ${row.signingKeyId} expires at ${outcome.keyNotAfter}, before this permission; ` +
        'the gateway honours it only until then',
    );
  }
  return EXIT_OK;
}

/**
 * A grant adds a row; it does not replace the rows that already allow the same identity, key and
 * destination. Say which they are, and when one of them outlasts the new row, that access lasts longer.
 */
function otherRowsNote(row: SignedPermission, others: readonly PermissionRecord[]): string {
  const list = others.map((p) => `${p.permissionId} (not_after ${p.notAfter})`).join(', ');
  const latest = others.reduce((a, b) => (parseTimestamp(b.notAfter) > parseTimestamp(a.notAfter) ? b : a));
  const outlasts =
    parseTimestamp(latest.notAfter) > parseTimestamp(row.notAfter)
      ? ` ${latest.permissionId} ends later: it keeps allowing access until ${latest.notAfter}, after the new row ends.`
      : '';
  const one = others.length === 1;
  return (
    `note: ${row.subjectIdentity} -> ${row.destination} with this agent key already has ` +
    `${one ? 'an active permission' : `${others.length} active permissions`}: ${list}; ` +
    `${one ? 'it stays' : 'they stay'} in force next to ${row.permissionId}, the gateway allows while any is valid.` +
    `${outlasts} To change a window, renew a row by passing its PERMISSION_ID (it is revoked and replaced by the new row) instead of adding rows.`
  );
}
