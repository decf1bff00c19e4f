/**
 * What an allowed receipt says about the registry (docs/contract.md "Receipts", verifier reasons): the
 * permission row it names exists, with the canonical bytes, signature and signer it recorded, the
 * signature verifies, and the gateway's own policy (core/policy.ts evaluateCandidate) would have allowed
 * it at the receipt's `opened` time. The registry keeps revoked rows (a revocation is final, never a
 * DELETE), so "then" is the rows as they are with any revocation later than `opened` not yet made.
 */
import { createHash } from 'node:crypto';
import { canonicalPermissionBytes } from '../core/permission-bytes.js';
import {
  type Candidate,
  type CandidateVerdict,
  evaluateCandidate,
  type PermissionRow,
  type ScopeRow,
  type TrustRoots,
} from '../core/policy.js';
import type { Finding, Located, VerifyReason } from '../core/receipt-chain.js';
import type { TunnelReceipt } from '../core/receipt-format.js';
import { type Micros, parseTimestamp } from '../core/timestamp.js';
import type { RegistryRows } from './registry-dump.js';
import { verifySignature } from './verify.js';

/** The problem with an allowed receipt's permission, or null when the registry bears it out. */
export function checkReceiptPermission(
  at: Located<TunnelReceipt>,
  rows: RegistryRows,
  roots: TrustRoots,
): Finding | null {
  const r = at.receipt;
  const found = (reason: VerifyReason, detail: string): Finding => ({
    file: at.file,
    line: at.line,
    seq: at.seq,
    reason,
    detail,
  });
  if (r.decision !== 'allow' || r.permission_id === null) return null;
  const row = rows.permissions.get(r.permission_id);
  if (row === undefined)
    return found('permission_missing', `permission ${r.permission_id} is not in the registry`);

  let signed: Buffer;
  try {
    signed = canonicalPermissionBytes({
      ...row,
      notBefore: parseTimestamp(row.notBefore),
      notAfter: parseTimestamp(row.notAfter),
    });
  } catch (err) {
    return found('permission_mismatch', `permission ${row.permissionId}: ${(err as Error).message}`);
  }
  const differs: string[] = [];
  if (createHash('sha256').update(signed).digest('hex') !== r.permission_sha256)
    differs.push('the sha256 of its canonical bytes');
  if (row.signature.toString('base64') !== r.permission_signature) differs.push('its signature');
  if (row.signingKeyId !== r.signing_key_id)
    differs.push(`its signer (${row.signingKeyId}, receipt ${r.signing_key_id})`);
  if (differs.length > 0)
    return found(
      'permission_mismatch',
      `permission ${row.permissionId} in the registry differs from the receipt: ${differs.join(', ')}`,
    );

  const signer = rows.keys.get(row.signingKeyId) ?? null;
  if (signer !== null && !verifySignature(signer.spkiDer, signed, row.signature))
    return found(
      'permission_signature_invalid',
      `the signature of permission ${row.permissionId} does not verify with key ${signer.keyId}`,
    );

  let opened: Micros;
  try {
    opened = parseTimestamp(r.opened);
  } catch {
    return found('not_authorized_then', `opened ${r.opened} is not a timestamp`);
  }
  const then = <T extends { revokedAt: string | null }>(x: T): T =>
    x.revokedAt !== null && laterThan(x.revokedAt, opened) ? { ...x, revokedAt: null } : x;
  // The agent key the receipt names must be the row's; else the request cannot match the row.
  const rowSpkiSha = createHash('sha256').update(row.subjectSpkiDer).digest('hex');
  const request = {
    identity: r.source_identity ?? '',
    destination: r.destination ?? '',
    spkiDer: rowSpkiSha === r.source_spki_sha256 ? row.subjectSpkiDer : Buffer.alloc(0),
  };
  const scopes = scopesThen(rows.scopes, row, opened).map(then);
  const candidates: Candidate[] = (scopes.length === 0 ? [null] : scopes).map((scope) => ({
    permission: then(row as PermissionRow & { revokedAt: string | null }),
    signer: signer === null ? null : then(signer),
    scope,
  }));
  let first: CandidateVerdict | null = null;
  for (const c of candidates) {
    const verdict = evaluateCandidate(request, c, opened, verifySignature, roots);
    if (verdict.ok) return null;
    first ??= verdict;
  }
  if (first === null || first.ok) return null;
  return found('not_authorized_then', `${first.reason}: ${first.detail} (at opened ${r.opened})`);
}

/**
 * The scope rows of the row's signer and destination, best first as the gateway's candidate query orders
 * them (unrevoked at `opened`, covering the permission's window, root-signed, latest), each marked
 * replaysRevoked by the revocations made by `opened` (core/registry-queries.ts revokedDelegation).
 */
function scopesThen(all: readonly ScopeRow[], row: PermissionRow, opened: Micros): ScopeRow[] {
  const mine = all.filter((s) => s.signingKeyId === row.signingKeyId && s.destination === row.destination);
  const revokedBy = (s: ScopeRow) => s.revokedAt !== null && !laterThan(s.revokedAt, opened);
  const marked = mine.map((s) => ({
    ...s,
    replaysRevoked: mine.some(
      (o) =>
        o.id !== s.id &&
        revokedBy(o) &&
        ((o.notBefore === s.notBefore && o.notAfter === s.notAfter) ||
          laterThan(o.revokedAt!, micros(s.notBefore))),
    ),
  }));
  const key = (s: ScopeRow) => [
    revokedBy(s) ? 1 : 0,
    s.notBefore <= row.notBefore && s.notAfter >= row.notAfter ? 0 : 1,
    s.rootSignature == null ? 1 : 0,
  ];
  return marked.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i]! - kb[i]!;
    return b.notAfter.localeCompare(a.notAfter);
  });
}

/** Canonical timestamp text compared as an instant; text that is no timestamp counts as "now" (never later). */
function laterThan(text: string, than: Micros): boolean {
  try {
    return parseTimestamp(text) > than;
  } catch {
    return false;
  }
}

function micros(text: string): Micros {
  try {
    return parseTimestamp(text);
  } catch {
    return 0n;
  }
}
