/**
 * The registry CLI's SQL: the writes (upserts and revocations) and the reads that guard them. Every
 * statement is parameterized; every time is computed by PostgreSQL from now() and leaves it as canonical
 * text through tsText(), never through a JavaScript Date. Callers run these inside one transaction
 * (registry-cli/db.ts) and lock the signing key row first, which serializes concurrent admins working
 * on the same principal.
 */
import type pg from 'pg';
import { ALGORITHM_ECDSA_P256_SHA256 } from '../core/ecdsa.js';
import type { PermissionRow, ScopeRow, SignerRow } from '../core/policy.js';
import { tsText } from '../core/registry-queries.js';
import type { Validity } from './args.js';

/** The rows the CLI reads back have the shapes the policy decides on (core/policy.ts). */
export type SigningKeyRow = SignerRow;
export type { ScopeRow };
/** A permission row as read back (the signature is not). */
export type PermissionRecord = Omit<PermissionRow, 'signature'>;

// now() + VALID_DAYS, computed by the database so the window never depends on the admin's clock.
const PLUS_DAYS = (param: string) => `(now() + make_interval(days => ${param}::int))`;

/** The signing key columns, as KeyRecord; `t` is a table alias with its dot ('k.') or ''. */
const keyColumns = (t = '') => `${t}key_id AS key_id, ${t}algorithm AS algorithm,
  ${t}public_key_spki_der AS public_key_spki_der, ${tsText(`${t}not_before`)} AS not_before,
  ${tsText(`${t}not_after`)} AS not_after, ${tsText(`${t}revoked_at`)} AS revoked_at`;
const KEY_COLUMNS = keyColumns();

/** not_before / not_after / revoked_at as every registry table has them (text from tsText). */
type ValidityRecord = { not_before: string; not_after: string; revoked_at: string | null };

function validity(r: ValidityRecord): { notBefore: string; notAfter: string; revokedAt: string | null } {
  return { notBefore: r.not_before, notAfter: r.not_after, revokedAt: r.revoked_at };
}

type KeyRecord = ValidityRecord & {
  key_id: string;
  algorithm: string;
  public_key_spki_der: Buffer;
};

function keyRow(r: KeyRecord): SigningKeyRow {
  return {
    keyId: r.key_id,
    algorithm: r.algorithm,
    spkiDer: r.public_key_spki_der,
    ...validity(r),
  };
}

/**
 * The signing key row, locked until the transaction ends: FOR UPDATE when the caller changes the key
 * or its scopes, FOR SHARE when it only relies on it (a grant), so a concurrent revocation waits.
 */
export async function lockSigningKey(
  db: pg.ClientBase,
  keyId: string,
  mode: 'update' | 'share',
): Promise<SigningKeyRow | undefined> {
  const r = await db.query<KeyRecord>(
    `SELECT ${KEY_COLUMNS} FROM principal_signing_keys WHERE key_id = $1 FOR ${mode === 'update' ? 'UPDATE' : 'SHARE'}`,
    [keyId],
  );
  return r.rows[0] === undefined ? undefined : keyRow(r.rows[0]);
}

/** Which key id, if any, already holds this SPKI (the column is UNIQUE). */
export async function keyIdBySpki(db: pg.ClientBase, spkiDer: Buffer): Promise<string | undefined> {
  const r = await db.query<{ key_id: string }>(
    'SELECT key_id FROM principal_signing_keys WHERE public_key_spki_der = $1',
    [spkiDer],
  );
  return r.rows[0]?.key_id;
}

export async function insertSigningKey(
  db: pg.ClientBase,
  keyId: string,
  spkiDer: Buffer,
  validDays: number,
): Promise<SigningKeyRow> {
  const r = await db.query<KeyRecord>(
    `INSERT INTO principal_signing_keys (key_id, algorithm, public_key_spki_der, not_before, not_after)
     VALUES ($1, $2, $3, now(), ${PLUS_DAYS('$4')})
     RETURNING ${KEY_COLUMNS}`,
    [keyId, ALGORITHM_ECDSA_P256_SHA256, spkiDer, validDays],
  );
  return keyRow(r.rows[0]!);
}

export type SigningKeyRefresh = {
  readonly row: SigningKeyRow;
  /** not_after before the refresh. */
  readonly previousNotAfter: string;
  /** now + validDays, what the refresh asked for. */
  readonly requestedNotAfter: string;
};

/**
 * Re-registration of the same key: valid at least until now + validDays. A refresh only ever widens the
 * window, like a scope refresh: not_before never moves later (the key's recorded validity keeps covering
 * what it already signed) and not_after = greatest(existing, now + validDays), so re-running the command
 * with a smaller VALID_DAYS never cuts short the grants the key signed. Shortening is a separate action.
 */
export async function refreshSigningKey(
  db: pg.ClientBase,
  keyId: string,
  validDays: number,
): Promise<SigningKeyRefresh> {
  const r = await db.query<KeyRecord & { previous_not_after: string; requested_not_after: string }>(
    `WITH old AS (SELECT key_id, not_after FROM principal_signing_keys WHERE key_id = $1 FOR UPDATE)
     UPDATE principal_signing_keys k
     SET not_before = least(k.not_before, now()), not_after = greatest(k.not_after, ${PLUS_DAYS('$2')}),
         updated_at = now()
     FROM old WHERE k.key_id = old.key_id
     RETURNING ${keyColumns('k.')},
       ${tsText('old.not_after')} AS previous_not_after, ${tsText(PLUS_DAYS('$2'))} AS requested_not_after`,
    [keyId, validDays],
  );
  const row = r.rows[0]!;
  return {
    row: keyRow(row),
    previousNotAfter: row.previous_not_after,
    requestedNotAfter: row.requested_not_after,
  };
}

/**
 * --replace: a different key under the same id. What the old key signed stops verifying, and the
 * caller revokes the old key's scopes (revokeScopes): they were delegated to the old key.
 */
export async function replaceSigningKey(
  db: pg.ClientBase,
  keyId: string,
  spkiDer: Buffer,
  validDays: number,
): Promise<SigningKeyRow> {
  const r = await db.query<KeyRecord>(
    `UPDATE principal_signing_keys
     SET public_key_spki_der = $2, algorithm = $3, not_before = now(), not_after = ${PLUS_DAYS('$4')},
         updated_at = now()
     WHERE key_id = $1
     RETURNING ${KEY_COLUMNS}`,
    [keyId, spkiDer, ALGORITHM_ECDSA_P256_SHA256, validDays],
  );
  return keyRow(r.rows[0]!);
}

const SCOPE_COLUMNS = (
  alias: string,
) => `${alias}.id::text AS id, ${alias}.signing_key_id, ${alias}.destination,
  ${tsText(`${alias}.not_before`)} AS not_before, ${tsText(`${alias}.not_after`)} AS not_after,
  ${tsText(`${alias}.revoked_at`)} AS revoked_at`;

type ScopeRecord = ValidityRecord & {
  id: string;
  signing_key_id: string;
  destination: string;
};

function scopeRow(r: ScopeRecord): ScopeRow {
  return {
    id: r.id,
    signingKeyId: r.signing_key_id,
    destination: r.destination,
    ...validity(r),
  };
}

export type ScopeUpsert = {
  readonly scope: ScopeRow;
  readonly action: 'created' | 'extended' | 'unchanged';
};

/**
 * Grant or refresh the delegation of `destination` to `keyId` until now + validDays. A refresh only ever
 * widens the window: not_before = least(existing, now) keeps every permission the scope already covers
 * valid (the original moved not_before to now and silently broke them), and not_after never shrinks.
 * Of several active rows (possible in registries written by the original) the longest-lived is widened.
 * The caller holds the signing key row FOR UPDATE, so two refreshes cannot both insert.
 */
export async function upsertScope(
  db: pg.ClientBase,
  keyId: string,
  destination: string,
  validDays: number,
): Promise<ScopeUpsert> {
  const updated = await db.query<ScopeRecord & { old_not_before: string; old_not_after: string }>(
    `WITH target AS (
       SELECT id, not_before AS old_nb, not_after AS old_na FROM principal_key_permissions
       WHERE signing_key_id = $1 AND destination = $2 AND revoked_at IS NULL
       ORDER BY not_after DESC, id DESC
       LIMIT 1
       FOR UPDATE)
     UPDATE principal_key_permissions s
     SET not_before = least(s.not_before, now()), not_after = greatest(s.not_after, ${PLUS_DAYS('$3')}),
         updated_at = now()
     FROM target WHERE s.id = target.id
     RETURNING ${SCOPE_COLUMNS('s')},
       ${tsText('target.old_nb')} AS old_not_before, ${tsText('target.old_na')} AS old_not_after`,
    [keyId, destination, validDays],
  );
  const row = updated.rows[0];
  if (row !== undefined) {
    const same = row.not_before === row.old_not_before && row.not_after === row.old_not_after;
    return { scope: scopeRow(row), action: same ? 'unchanged' : 'extended' };
  }
  const inserted = await db.query<ScopeRecord>(
    `INSERT INTO principal_key_permissions AS s (signing_key_id, destination, not_before, not_after)
     VALUES ($1, $2, now(), ${PLUS_DAYS('$3')})
     RETURNING ${SCOPE_COLUMNS('s')}`,
    [keyId, destination, validDays],
  );
  return { scope: scopeRow(inserted.rows[0]!), action: 'created' };
}

/** Revoke every active scope row of a key; the rows as revoked, by destination. */
export async function revokeScopes(db: pg.ClientBase, keyId: string): Promise<ScopeRow[]> {
  const r = await db.query<ScopeRecord>(
    `UPDATE principal_key_permissions s SET revoked_at = now(), updated_at = now()
     WHERE s.signing_key_id = $1 AND s.revoked_at IS NULL
     RETURNING ${SCOPE_COLUMNS('s')}`,
    [keyId],
  );
  return r.rows.map(scopeRow).sort((a, b) => a.destination.localeCompare(b.destination));
}

/** Active scope rows of a key, the one covering [notBefore, notAfter] first for each destination. */
export async function activeScopes(
  db: pg.ClientBase,
  keyId: string,
  destination?: string,
  window?: { readonly notBefore: string; readonly notAfter: string },
): Promise<ScopeRow[]> {
  const r = await db.query<ScopeRecord>(
    `SELECT ${SCOPE_COLUMNS('s')} FROM principal_key_permissions s
     WHERE s.signing_key_id = $1 AND s.revoked_at IS NULL AND ($2::text IS NULL OR s.destination = $2)
     ORDER BY s.destination,
       (s.not_before <= $3::timestamptz AND s.not_after >= $4::timestamptz) DESC NULLS LAST,
       s.not_after DESC, s.id DESC
     LIMIT 1000`,
    [keyId, destination ?? null, window?.notBefore ?? null, window?.notAfter ?? null],
  );
  return r.rows.map(scopeRow);
}

/** The window of a new grant: [now, now + validity], both read back as canonical text. */
export async function grantWindow(
  db: pg.ClientBase,
  validity: Validity,
): Promise<{ readonly notBefore: string; readonly notAfter: string }> {
  const r = await db.query<{ not_before: string; not_after: string }>(
    `SELECT ${tsText('now()')} AS not_before,
       ${tsText('(now() + make_interval(days => $1::int, mins => $2::int))')} AS not_after`,
    [validity.days ?? 0, validity.minutes ?? 0],
  );
  const row = r.rows[0]!;
  return { notBefore: row.not_before, notAfter: row.not_after };
}

const PERMISSION_COLUMNS = `p.permission_id, p.signing_key_id, p.subject_identity, p.subject_public_key_spki_der,
  p.destination, ${tsText('p.not_before')} AS not_before, ${tsText('p.not_after')} AS not_after,
  ${tsText('p.revoked_at')} AS revoked_at`;

type PermissionDbRecord = ValidityRecord & {
  permission_id: string;
  signing_key_id: string;
  subject_identity: string;
  subject_public_key_spki_der: Buffer;
  destination: string;
};

function permissionRecord(r: PermissionDbRecord): PermissionRecord {
  return {
    permissionId: r.permission_id,
    signingKeyId: r.signing_key_id,
    subjectIdentity: r.subject_identity,
    subjectSpkiDer: r.subject_public_key_spki_der,
    destination: r.destination,
    ...validity(r),
  };
}

export async function lockPermission(
  db: pg.ClientBase,
  permissionId: string,
): Promise<PermissionRecord | undefined> {
  const r = await db.query<PermissionDbRecord>(
    `SELECT ${PERMISSION_COLUMNS} FROM permission_registry p WHERE p.permission_id = $1 FOR UPDATE`,
    [permissionId],
  );
  return r.rows[0] === undefined ? undefined : permissionRecord(r.rows[0]);
}

/** A new permission row: timestamps are the canonical text exactly as signed. */
export type SignedPermission = Omit<PermissionRow, 'revokedAt'>;

/**
 * Insert a signed permission; false when the id is taken. A written row never changes (the registry
 * refuses it, docs/contract.md "A revocation is final"): a renewal is a new row, see revokePermission.
 */
export async function insertPermission(db: pg.ClientBase, p: SignedPermission): Promise<boolean> {
  const r = await db.query(
    `INSERT INTO permission_registry (permission_id, signing_key_id, subject_identity,
       subject_public_key_spki_der, destination, not_before, not_after, signature)
     VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $7::timestamptz, $8)
     ON CONFLICT (permission_id) DO NOTHING`,
    [
      p.permissionId,
      p.signingKeyId,
      p.subjectIdentity,
      p.subjectSpkiDer,
      p.destination,
      p.notBefore,
      p.notAfter,
      p.signature,
    ],
  );
  return r.rowCount === 1;
}

/** Revoke one active permission by id; the revocation time, or undefined when it was not active. */
export async function revokePermission(db: pg.ClientBase, permissionId: string): Promise<string | undefined> {
  const r = await db.query<{ revoked_at: string }>(
    `UPDATE permission_registry SET revoked_at = now(), updated_at = now()
     WHERE permission_id = $1 AND revoked_at IS NULL
     RETURNING ${tsText('revoked_at')} AS revoked_at`,
    [permissionId],
  );
  return r.rows[0]?.revoked_at;
}

/**
 * The other live rows (not revoked, not expired) that grant the same identity and agent key the same
 * destination: a new row does not replace them, and the gateway allows while any of them is valid.
 */
export async function otherActivePermissions(
  db: pg.ClientBase,
  subjectIdentity: string,
  spkiDer: Buffer,
  destination: string,
  exceptPermissionId: string,
): Promise<PermissionRecord[]> {
  const r = await db.query<PermissionDbRecord>(
    `SELECT ${PERMISSION_COLUMNS} FROM permission_registry p
     WHERE p.subject_identity = $1 AND p.subject_public_key_spki_der = $2 AND p.destination = $3
       AND p.revoked_at IS NULL AND p.not_after > now() AND p.permission_id <> $4
     ORDER BY p.not_after DESC, p.permission_id
     LIMIT 100`,
    [subjectIdentity, spkiDer, destination, exceptPermissionId],
  );
  return r.rows.map(permissionRecord);
}

/** How many rows, revoked or not, exist for one agent key (optionally one destination). */
export async function countPermissions(
  db: pg.ClientBase,
  subjectIdentity: string,
  spkiDer: Buffer,
  destination: string | undefined,
): Promise<number> {
  const r = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM permission_registry p
     WHERE p.subject_identity = $1 AND p.subject_public_key_spki_der = $2
       AND ($3::text IS NULL OR p.destination = $3)`,
    [subjectIdentity, spkiDer, destination ?? null],
  );
  return r.rows[0]!.n;
}

/** Revoke (never delete) the active permissions of one agent key, optionally for one destination. */
export async function revokePermissions(
  db: pg.ClientBase,
  subjectIdentity: string,
  spkiDer: Buffer,
  destination: string | undefined,
): Promise<PermissionRecord[]> {
  const r = await db.query<PermissionDbRecord>(
    `UPDATE permission_registry p SET revoked_at = now(), updated_at = now()
     WHERE p.subject_identity = $1 AND p.subject_public_key_spki_der = $2 AND p.revoked_at IS NULL
       AND ($3::text IS NULL OR p.destination = $3)
     RETURNING ${PERMISSION_COLUMNS}`,
    [subjectIdentity, spkiDer, destination ?? null],
  );
  return r.rows.map(permissionRecord).sort((a, b) => a.permissionId.localeCompare(b.permissionId));
}

/** Permissions for `list`, newest first per identity and destination. */
export async function listPermissions(
  db: pg.ClientBase,
  filter: { readonly identity?: string | undefined; readonly limit: number },
): Promise<PermissionRecord[]> {
  const r = await db.query<PermissionDbRecord>(
    `SELECT ${PERMISSION_COLUMNS} FROM permission_registry p
     WHERE ($1::text IS NULL OR p.subject_identity = $1)
     ORDER BY p.subject_identity, p.destination, p.not_after DESC, p.permission_id
     LIMIT $2`,
    [filter.identity ?? null, filter.limit],
  );
  return r.rows.map(permissionRecord);
}
