/**
 * What a receipt binds an allowed tunnel to (docs/contract.md "Receipts"): the SHA-256 of the exact bytes
 * the principal signed for the permission row, so an auditor can match the receipt to the row and its
 * signature without trusting the gateway's word for which row it was.
 */
import { createHash } from 'node:crypto';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import type { PermissionRow } from '../../core/policy.js';
import { parseTimestamp } from '../../core/timestamp.js';

/** Lowercase hex SHA-256 of `p`'s canonical signed bytes; decide() has already checked they encode. */
export function permissionDigest(p: PermissionRow): string {
  const bytes = canonicalPermissionBytes({
    permissionId: p.permissionId,
    signingKeyId: p.signingKeyId,
    subjectIdentity: p.subjectIdentity,
    subjectSpkiDer: p.subjectSpkiDer,
    destination: p.destination,
    notBefore: parseTimestamp(p.notBefore),
    notAfter: parseTimestamp(p.notAfter),
  });
  return createHash('sha256').update(bytes).digest('hex');
}
