/**
 * Signing one permission row, the one code path of `agent-permissions grant` and `approve` (docs/contract.md
 * "Registry CLI"): inside the caller's transaction the principal key row is locked, the key and its scope
 * are checked, the row is signed by the principal's key in the TPM and written, and the gateway's own
 * candidate query and policy decide on it as written; any refusal throws and the caller's transaction rolls
 * back. A new row does not replace other active rows for the same identity, key and destination; an
 * active PERMISSION_ID is renewed: a written row never changes (docs/contract.md "A revocation is final"),
 * so the renewal is a new signed row under a new id and the old row is revoked in the same transaction.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { canonicalPermissionBytes } from '../core/permission-bytes.js';
import { decide, evaluateCandidate } from '../core/policy.js';
import { fetchActiveCandidates } from '../core/registry-queries.js';
import { assertP256Spki, spkiFingerprint } from '../core/spki-input.js';
import { MICROS_PER_DAY, type Micros, parseTimestamp } from '../core/timestamp.js';
import { openSigner, type Signer } from '../pkcs11/signer.js';
import type { SignerOptions } from '../pkcs11/signer-options.js';
import type { Validity } from './args.js';
import { assertSignerUsable } from './commands/signer-state.js';
import { Refusal, toCliError } from './errors.js';
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
} from './registry-writes.js';
import { verifySignature } from './verify.js';

/**
 * The principal's key in its token, opened on first use (a refusal before signing never touches the TPM)
 * and then kept for every row the command signs. The caller closes it.
 */
export class PrincipalSigner {
  private signer: Signer | undefined;

  constructor(readonly options: SignerOptions) {}

  get(): Signer {
    this.signer ??= openSigner(this.options);
    return this.signer;
  }

  close(): void {
    this.signer?.close();
    this.signer = undefined;
  }
}

export type PermissionRequest = {
  readonly keyId: string;
  readonly subjectIdentity: string;
  readonly subjectSpkiDer: Buffer;
  /** Normalized (core/destination.ts). */
  readonly destination: string;
  readonly validity: Validity;
  /** The id asked for; an active row with this id is renewed. */
  readonly permissionId?: string | undefined;
  /** How the command's own argument could ask for at most `days` (whole days left in the scope). */
  readonly shorterWindowHint: (days: bigint) => string;
};

export type SignedGrant = {
  readonly row: SignedPermission;
  readonly action: 'created' | 'renewed';
  /** The renewed row, revoked in the same transaction. */
  readonly renewed: { readonly permissionId: string; readonly revokedAt: string | undefined } | undefined;
  readonly keyNotAfter: string;
  /** Other active rows for the same identity, key and destination, which stay in force. */
  readonly others: readonly PermissionRecord[];
};

export async function signPermission(
  db: pg.ClientBase,
  signerSource: PrincipalSigner,
  req: PermissionRequest,
): Promise<SignedGrant> {
  const { keyId, subjectIdentity, subjectSpkiDer, destination } = req;
  try {
    assertP256Spki(subjectSpkiDer);
  } catch (err) {
    throw toCliError(err);
  }
  const requestedId = req.permissionId ?? `perm-${randomUUID()}`;
  const window = await grantWindow(db, req.validity);
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
          : `${req.shorterWindowHint(maxDays)}, or extend the scope with grant-principal-scope.sh`),
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
  const others = await otherActivePermissions(db, subjectIdentity, subjectSpkiDer, destination, requestedId);

  const message = canonicalPermissionBytes({
    permissionId,
    signingKeyId: keyId,
    subjectIdentity,
    subjectSpkiDer,
    destination,
    notBefore: now,
    notAfter,
  });
  const signer = signerSource.get();
  if (!signer.spkiDer.equals(key.spkiDer)) {
    throw new Refusal(
      `the TPM key labelled ${keyId} in token "${signerSource.options.tokenLabel}" (sha256 ${spkiFingerprint(signer.spkiDer)}) ` +
        `is not the key registered for ${keyId} (sha256 ${spkiFingerprint(key.spkiDer)})`,
    );
  }
  const row: SignedPermission = {
    permissionId,
    signingKeyId: keyId,
    subjectIdentity,
    subjectSpkiDer,
    destination,
    notBefore: window.notBefore,
    notAfter: window.notAfter,
    signature: signer.sign(message),
  };
  if (!(await insertPermission(db, row))) {
    throw new Refusal(`permission ${permissionId} was written concurrently; nothing was written`);
  }
  // The lock taken by lockPermission keeps the renewed row active until this revocation.
  const renewedRevokedAt = previous === undefined ? undefined : await revokePermission(db, requestedId);
  await assertGatewayHonours(db, row, now);
  return {
    row,
    action: previous === undefined ? 'created' : 'renewed',
    renewed: previous === undefined ? undefined : { permissionId: requestedId, revokedAt: renewedRevokedAt },
    keyNotAfter: key.notAfter,
    others,
  };
}

/** The gateway's own query and policy, against the row as written, before it becomes visible. */
async function assertGatewayHonours(db: pg.ClientBase, row: SignedPermission, now: Micros): Promise<void> {
  const { permissionId, subjectIdentity, destination } = row;
  const request = { identity: subjectIdentity, spkiDer: row.subjectSpkiDer, destination };
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
}

/** The notes (stderr) a signed row deserves: rows it does not replace, a signer that expires first. */
export function grantNotes(grant: SignedGrant): string[] {
  const { row, others } = grant;
  const notes: string[] = [];
  if (others.length > 0) notes.push(otherRowsNote(row, others));
  if (parseTimestamp(grant.keyNotAfter) < parseTimestamp(row.notAfter)) {
    notes.push(
      `note: principal key ${row.signingKeyId} expires at ${grant.keyNotAfter}, before this permission; ` +
        'the gateway honours it only until then',
    );
  }
  return notes;
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
