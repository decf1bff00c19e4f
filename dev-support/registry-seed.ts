// Seed a test or bench registry exactly as the registry CLI would (docs/contract.md "Schema", "Signed
// bytes"): a principal signing key, its delegation scope, and permission rows signed over
// core/permission-bytes.ts canonicalPermissionBytes with node crypto (ECDSA P-256 / SHA-256, DER). Timestamps
// travel as canonical text, never through Date.
//
//   const principal = createPrincipalKey();
//   await grant(dbUrl, { principalId: 'org-alice', principal, identity: 'agent-alpha',
//                        subjectSpkiDer: carrier.spkiDer, destination: 'docstore:443' });
import { sign } from 'node:crypto';
import pg from 'pg';
import { normalizeDestination } from '../core/destination.js';
import { canonicalPermissionBytes } from '../core/permission-bytes.js';
import { formatTimestamp, type Micros, nowMicros } from '../core/timestamp.js';
import type { PrincipalKey } from './pki.js';

export type Window = { readonly notBefore: Micros; readonly notAfter: Micros };

/** Whole seconds (PostgreSQL keeps them exactly) relative to now. */
export function windowFromNow(fromDays: number, toDays: number): Window {
  const now = (nowMicros() / 1_000_000n) * 1_000_000n;
  return {
    notBefore: now + BigInt(Math.round(fromDays * 86_400)) * 1_000_000n,
    notAfter: now + BigInt(Math.round(toDays * 86_400)) * 1_000_000n,
  };
}

/** One short-lived registry connection for `fn` (seeding and test set-up, never the gateway's path). */
export async function withClient<T>(databaseUrl: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export type PrincipalSpec = {
  readonly principalId: string;
  readonly principal: PrincipalKey;
  readonly window?: Window;
};

/** Register a principal signing key (idempotent on key_id). */
export async function seedPrincipal(databaseUrl: string, p: PrincipalSpec): Promise<void> {
  const w = p.window ?? windowFromNow(-2, 60);
  await withClient(databaseUrl, (c) =>
    c.query(
      `INSERT INTO principal_signing_keys (key_id, algorithm, public_key_spki_der, not_before, not_after)
       VALUES ($1, 'ecdsa_p256_sha256', $2, $3::timestamptz, $4::timestamptz)
       ON CONFLICT (key_id) DO NOTHING`,
      [p.principalId, p.principal.spkiDer, formatTimestamp(w.notBefore), formatTimestamp(w.notAfter)],
    ),
  );
}

/** Delegate `destination` to the principal (skipped when an active row already exists). Returns its id. */
export async function seedScope(
  databaseUrl: string,
  s: { readonly principalId: string; readonly destination: string; readonly window?: Window },
): Promise<string> {
  const destination = normalizeDestination(s.destination).normalized;
  const w = s.window ?? windowFromNow(-2, 60);
  return withClient(databaseUrl, async (c) => {
    const existing = await c.query<{ id: string }>(
      `SELECT id::text AS id FROM principal_key_permissions
       WHERE signing_key_id = $1 AND destination = $2 AND revoked_at IS NULL`,
      [s.principalId, destination],
    );
    if (existing.rows[0] !== undefined) return existing.rows[0].id;
    const inserted = await c.query<{ id: string }>(
      `INSERT INTO principal_key_permissions (signing_key_id, destination, not_before, not_after)
       VALUES ($1, $2, $3::timestamptz, $4::timestamptz) RETURNING id::text AS id`,
      [s.principalId, destination, formatTimestamp(w.notBefore), formatTimestamp(w.notAfter)],
    );
    return inserted.rows[0]!.id;
  });
}

export type PermissionSpec = {
  readonly permissionId: string;
  readonly principalId: string;
  readonly principal: PrincipalKey;
  readonly identity: string;
  readonly subjectSpkiDer: Uint8Array;
  /** Normalized here (docs/contract.md "Destination normalization"), as the CLI does. */
  readonly destination: string;
  readonly window?: Window;
  /** Sign with this key instead (a forged row). */
  readonly signWith?: PrincipalKey;
};

/** Insert one signed permission row. */
export async function seedPermission(databaseUrl: string, p: PermissionSpec): Promise<void> {
  const destination = normalizeDestination(p.destination).normalized;
  const w = p.window ?? windowFromNow(-1, 30);
  const message = canonicalPermissionBytes({
    permissionId: p.permissionId,
    signingKeyId: p.principalId,
    subjectIdentity: p.identity,
    subjectSpkiDer: p.subjectSpkiDer,
    destination,
    notBefore: w.notBefore,
    notAfter: w.notAfter,
  });
  const signature = sign('sha256', message, {
    key: (p.signWith ?? p.principal).privateKey,
    dsaEncoding: 'der',
  });
  await withClient(databaseUrl, (c) =>
    c.query(
      `INSERT INTO permission_registry (permission_id, signing_key_id, subject_identity, subject_public_key_spki_der,
         destination, not_before, not_after, signature)
       VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $7::timestamptz, $8)`,
      [
        p.permissionId,
        p.principalId,
        p.identity,
        Buffer.from(p.subjectSpkiDer),
        destination,
        formatTimestamp(w.notBefore),
        formatTimestamp(w.notAfter),
        signature,
      ],
    ),
  );
}

let permissionSeq = 0;

export type GrantSpec = Omit<PermissionSpec, 'permissionId'> & { readonly permissionId?: string };

/** Principal + scope + signed permission: everything one allowed CONNECT needs. Returns the permission id. */
export async function grant(databaseUrl: string, g: GrantSpec): Promise<string> {
  const permissionId = g.permissionId ?? `perm-${process.pid}-${++permissionSeq}`;
  // One window for key and scope, computed once: two calls can fall on different seconds, and a scope
  // ending after its key is scope_not_rooted under trust roots (docs/contract.md "Root of trust").
  const window = windowFromNow(-2, 60);
  await seedPrincipal(databaseUrl, { principalId: g.principalId, principal: g.principal, window });
  await seedScope(databaseUrl, { principalId: g.principalId, destination: g.destination, window });
  await seedPermission(databaseUrl, { ...g, permissionId });
  return permissionId;
}

/**
 * Revoke a permission row (revoked_at = now()), as `agent-permissions.sh delete` does. A revoked row is
 * left alone: the registry refuses moving revoked_at later (docs/contract.md "A revocation is final").
 */
export async function revokePermission(databaseUrl: string, permissionId: string): Promise<void> {
  await withClient(databaseUrl, (c) =>
    c.query(
      `UPDATE permission_registry SET revoked_at = now(), updated_at = now()
       WHERE permission_id = $1 AND revoked_at IS NULL`,
      [permissionId],
    ),
  );
}
