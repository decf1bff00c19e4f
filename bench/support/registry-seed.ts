/**
 * Seed a registry with what one bench identity needs: a principal signing key, its scope for the sink's
 * destination, and a signed permission row (SPEC §1–§2), exactly as the registry CLI would write them.
 */
import { sign } from 'node:crypto';
import pg from 'pg';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import { formatTimestamp, MICROS_PER_DAY, nowMicros } from '../../core/timestamp.js';
import type { SigningKey } from './pki.js';

export type GrantSpec = {
  readonly principalId: string;
  readonly principal: SigningKey;
  readonly permissionId: string;
  readonly identity: string;
  readonly subjectSpkiDer: Uint8Array;
  /** Normalized destination (host:port). */
  readonly destination: string;
};

/** Idempotent for the principal and scope; inserts one permission row per call. */
export async function seedGrant(databaseUrl: string, g: GrantSpec): Promise<void> {
  // Whole seconds keep the text simple; PostgreSQL stores these microseconds exactly.
  const now = (nowMicros() / 1_000_000n) * 1_000_000n;
  const keyFrom = now - 2n * MICROS_PER_DAY;
  const keyTo = now + 60n * MICROS_PER_DAY;
  const permFrom = now - MICROS_PER_DAY;
  const permTo = now + 30n * MICROS_PER_DAY;
  const message = canonicalPermissionBytes({
    permissionId: g.permissionId,
    signingKeyId: g.principalId,
    subjectIdentity: g.identity,
    subjectSpkiDer: g.subjectSpkiDer,
    destination: g.destination,
    notBefore: permFrom,
    notAfter: permTo,
  });
  const signature = sign('sha256', message, { key: g.principal.privateKey, dsaEncoding: 'der' });

  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query('BEGIN');
    await client.query(
      `INSERT INTO principal_signing_keys (key_id, algorithm, public_key_spki_der, not_before, not_after)
       VALUES ($1, 'ecdsa_p256_sha256', $2, $3::timestamptz, $4::timestamptz)
       ON CONFLICT (key_id) DO NOTHING`,
      [g.principalId, g.principal.spkiDer, formatTimestamp(keyFrom), formatTimestamp(keyTo)],
    );
    const scope = await client.query(
      `SELECT 1 FROM principal_key_permissions WHERE signing_key_id = $1 AND destination = $2 AND revoked_at IS NULL`,
      [g.principalId, g.destination],
    );
    if (scope.rowCount === 0) {
      await client.query(
        `INSERT INTO principal_key_permissions (signing_key_id, destination, not_before, not_after)
         VALUES ($1, $2, $3::timestamptz, $4::timestamptz)`,
        [g.principalId, g.destination, formatTimestamp(keyFrom), formatTimestamp(keyTo)],
      );
    }
    await client.query(
      `INSERT INTO permission_registry (permission_id, signing_key_id, subject_identity, subject_public_key_spki_der,
         destination, not_before, not_after, signature)
       VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $7::timestamptz, $8)`,
      [
        g.permissionId,
        g.principalId,
        g.identity,
        Buffer.from(g.subjectSpkiDer),
        g.destination,
        formatTimestamp(permFrom),
        formatTimestamp(permTo),
        signature,
      ],
    );
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    await client.end();
  }
}
