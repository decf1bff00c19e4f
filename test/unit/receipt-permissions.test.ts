// docs/contract.md "Receipts", the permission reasons of receipts verify (registry-cli/receipt-permissions.ts):
// a receipt judged against registry rows as they stood when its tunnel opened.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import type { PermissionRow, ScopeRow, SignerRow } from '../../core/policy.js';
import type { Located } from '../../core/receipt-chain.js';
import type { TunnelReceipt } from '../../core/receipt-format.js';
import { formatTimestamp, parseTimestamp } from '../../core/timestamp.js';
import { checkReceiptPermission } from '../../registry-cli/receipt-permissions.js';
import type { RegistryRows } from '../../registry-cli/registry-dump.js';
import { tunnelFields } from './fixtures/receipts.js';
import { allowedCandidate, DAY } from './fixtures/signed-rows.js';

const NOW = parseTimestamp('2026-03-01T10:00:00.000000Z');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function setup() {
  const c = allowedCandidate(NOW, { destination: 'docstore:443' });
  const p = c.candidate.permission;
  const receipt: TunnelReceipt = {
    ...tunnelFields(1),
    gateway: 'gw-1',
    seq: 1,
    prev: '0'.repeat(64),
    opened: formatTimestamp(NOW),
    source_identity: p.subjectIdentity,
    source_spki_sha256: sha256(p.subjectSpkiDer),
    destination: p.destination,
    permission_id: p.permissionId,
    permission_sha256: sha256(canonicalPermissionBytes(c.spec)),
    permission_signature: p.signature.toString('base64'),
    signing_key_id: p.signingKeyId,
  };
  return { ...c, receipt };
}

function rows(p: PermissionRow, k: SignerRow, scopes: ScopeRow[]): RegistryRows {
  return { permissions: new Map([[p.permissionId, p]]), keys: new Map([[k.keyId, k]]), scopes };
}

const at = (receipt: TunnelReceipt): Located<TunnelReceipt> => ({
  file: 'r.jsonl',
  line: 1,
  seq: 1,
  raw: '',
  receipt,
});
const check = (receipt: TunnelReceipt, r: RegistryRows) => checkReceiptPermission(at(receipt), r, new Map());

describe('a receipt against the registry rows', () => {
  it('holds when the row, its signer and scope allowed it at opened', () => {
    const s = setup();
    expect(
      check(s.receipt, rows(s.candidate.permission, s.candidate.signer!, [s.candidate.scope!])),
    ).toBeNull();
  });

  it('revocations after opened do not count; one before opened does', () => {
    const s = setup();
    const later = formatTimestamp(NOW + 1n);
    const r = rows(
      { ...s.candidate.permission, revokedAt: later },
      { ...s.candidate.signer!, revokedAt: later },
      [{ ...s.candidate.scope!, revokedAt: later }],
    );
    expect(check(s.receipt, r)).toBeNull();
    const earlier = formatTimestamp(NOW - 1n);
    const f = check(
      s.receipt,
      rows({ ...s.candidate.permission, revokedAt: earlier }, s.candidate.signer!, [s.candidate.scope!]),
    );
    expect(f?.reason).toBe('not_authorized_then');
    expect(f?.detail).toMatch(/^permission_revoked: permission perm-1 revoked at /);
  });

  it('a scope revoked before opened: not_authorized_then scope_revoked; another scope that covers it: holds', () => {
    const s = setup();
    const revoked = { ...s.candidate.scope!, revokedAt: formatTimestamp(NOW - DAY) };
    expect(check(s.receipt, rows(s.candidate.permission, s.candidate.signer!, [revoked]))?.detail).toMatch(
      /^scope_revoked: /,
    );
    const renewed: ScopeRow = { ...s.candidate.scope!, id: '2', notBefore: formatTimestamp(NOW - 5n * DAY) };
    expect(
      check(s.receipt, rows(s.candidate.permission, s.candidate.signer!, [revoked, renewed])),
    ).toBeNull();
  });

  it('no such row: permission_missing', () => {
    const s = setup();
    const f = check(
      { ...s.receipt, permission_id: 'perm-other' },
      rows(s.candidate.permission, s.candidate.signer!, []),
    );
    expect(f).toMatchObject({
      reason: 'permission_missing',
      detail: 'permission perm-other is not in the registry',
    });
  });

  it('a row whose window, signature or signer differs from the receipt: permission_mismatch naming each', () => {
    const s = setup();
    const moved = { ...s.candidate.permission, notAfter: formatTimestamp(NOW + 300n * DAY) };
    expect(check(s.receipt, rows(moved, s.candidate.signer!, [s.candidate.scope!]))?.detail).toMatch(
      /differs from the receipt: the sha256 of its canonical bytes$/,
    );
    const f = check(
      { ...s.receipt, permission_signature: 'AAAA', signing_key_id: 'org-bob' },
      rows(s.candidate.permission, s.candidate.signer!, [s.candidate.scope!]),
    );
    expect(f?.reason).toBe('permission_mismatch');
    expect(f?.detail).toMatch(/its signature, its signer \(org-alice, receipt org-bob\)$/);
  });

  it('row and receipt agree but the signature does not verify with the signer: permission_signature_invalid', () => {
    const s = setup();
    const other = allowedCandidate(NOW).candidate.signer!;
    const f = check(
      s.receipt,
      rows(s.candidate.permission, { ...s.candidate.signer!, spkiDer: other.spkiDer }, []),
    );
    expect(f?.reason).toBe('permission_signature_invalid');
  });

  it('a receipt naming another agent key than the row: not_authorized_then subject_mismatch', () => {
    const s = setup();
    const f = check(
      { ...s.receipt, source_spki_sha256: 'c'.repeat(64) },
      rows(s.candidate.permission, s.candidate.signer!, [s.candidate.scope!]),
    );
    expect(f?.detail).toMatch(/^subject_mismatch: /);
  });

  it('with trust roots, an unrooted signer: not_authorized_then signer_not_rooted', () => {
    const s = setup();
    const roots = new Map([['sha256:' + 'd'.repeat(64), s.signer.spkiDer]]);
    const f = checkReceiptPermission(
      at(s.receipt),
      rows(s.candidate.permission, s.candidate.signer!, [s.candidate.scope!]),
      roots,
    );
    expect(f?.detail).toMatch(/^signer_not_rooted: /);
  });

  it('deny and observe receipts are not checked against the registry', () => {
    const s = setup();
    const empty: RegistryRows = { permissions: new Map(), keys: new Map(), scopes: [] };
    expect(check({ ...s.receipt, decision: 'observe', permission_id: null }, empty)).toBeNull();
    expect(check({ ...s.receipt, decision: 'deny', deny_reason: 'no_permission' }, empty)).toBeNull();
  });
});
