// Root-sign registry rows for tests, the bench and the demo (docs/contract.md "Root-signed bytes"): the
// row is read back as stored, its canonical bytes (core/root-signed-bytes.ts) are signed with a software
// P-256 root key, and root_key_id/root_signature are written, as the registry CLI does with its token key.
//
//   const root = createPrincipalKey();                 // trust_roots = [root.spkiDer base64]
//   await rootSignPrincipal(dbUrl, 'org-alice', root);
//   await rootSignScopes(dbUrl, 'org-alice', root);
import { sign } from 'node:crypto';
import { tsText } from '../core/registry-queries.js';
import { canonicalPrincipalKeyBytes, canonicalScopeBytes, rootKeyId } from '../core/root-signed-bytes.js';
import { parseTimestamp } from '../core/timestamp.js';
import type { PrincipalKey } from './pki.js';
import { withClient } from './registry-seed.js';

const signWith = (root: PrincipalKey, message: Buffer) =>
  sign('sha256', message, { key: root.privateKey, dsaEncoding: 'der' });

/** The root signature of a principal key row as it is stored now (throws when there is no such row). */
export async function principalRootSignature(
  databaseUrl: string,
  keyId: string,
  root: PrincipalKey,
): Promise<Buffer> {
  return withClient(databaseUrl, async (c) => {
    const r = await c.query<{ algorithm: string; spki: Buffer; nb: string; na: string }>(
      `SELECT algorithm, public_key_spki_der AS spki, ${tsText('not_before')} AS nb, ${tsText('not_after')} AS na
       FROM principal_signing_keys WHERE key_id = $1`,
      [keyId],
    );
    const row = r.rows[0];
    if (row === undefined) throw new Error(`no principal key ${keyId}`);
    const bytes = canonicalPrincipalKeyBytes({
      keyId,
      algorithm: row.algorithm,
      spkiDer: row.spki,
      notBefore: parseTimestamp(row.nb),
      notAfter: parseTimestamp(row.na),
    });
    return signWith(root, bytes);
  });
}

/** Root-sign a principal key row (replacing any root signature it has). */
export async function rootSignPrincipal(
  databaseUrl: string,
  keyId: string,
  root: PrincipalKey,
): Promise<void> {
  const signature = await principalRootSignature(databaseUrl, keyId, root);
  await withClient(databaseUrl, (c) =>
    c.query('UPDATE principal_signing_keys SET root_key_id = $2, root_signature = $3 WHERE key_id = $1', [
      keyId,
      rootKeyId(root.spkiDer),
      signature,
    ]),
  );
}

/** Root-sign the active scope rows of `keyId` (all destinations, or only `destination`). Returns their ids. */
export async function rootSignScopes(
  databaseUrl: string,
  keyId: string,
  root: PrincipalKey,
  destination?: string,
): Promise<string[]> {
  return withClient(databaseUrl, async (c) => {
    const r = await c.query<{ id: string; destination: string; nb: string; na: string; spki: Buffer }>(
      `SELECT s.id::text AS id, s.destination, ${tsText('s.not_before')} AS nb, ${tsText('s.not_after')} AS na,
         k.public_key_spki_der AS spki
       FROM principal_key_permissions s JOIN principal_signing_keys k ON k.key_id = s.signing_key_id
       WHERE s.signing_key_id = $1 AND s.revoked_at IS NULL AND ($2::text IS NULL OR s.destination = $2)`,
      [keyId, destination ?? null],
    );
    for (const row of r.rows) {
      const bytes = canonicalScopeBytes({
        signingKeyId: keyId,
        signingKeySpkiDer: row.spki,
        destination: row.destination,
        notBefore: parseTimestamp(row.nb),
        notAfter: parseTimestamp(row.na),
      });
      await c.query(
        'UPDATE principal_key_permissions SET root_key_id = $2, root_signature = $3 WHERE id = $1::bigint',
        [row.id, rootKeyId(root.spkiDer), signWith(root, bytes)],
      );
    }
    return r.rows.map((row) => row.id);
  });
}

/** Root-sign a principal's key row and its active scopes. */
export async function rootSignChain(databaseUrl: string, keyId: string, root: PrincipalKey): Promise<void> {
  await rootSignPrincipal(databaseUrl, keyId, root);
  await rootSignScopes(databaseUrl, keyId, root);
}

/** `trust_roots` entry for a root: base64 of its SPKI DER. */
export function trustRootEntry(root: PrincipalKey): string {
  return root.spkiDer.toString('base64');
}
