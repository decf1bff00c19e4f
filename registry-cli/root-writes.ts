/**
 * The registry CLI's SQL for the root of trust (schema version 6, docs/contract.md "Root of trust"): the
 * display-only table of root public keys, and the root_key_id / root_signature columns of principal key
 * and scope rows. Like registry-writes.ts: parameterized, times as canonical text, run inside the
 * caller's transaction.
 */
import type pg from 'pg';
import { fetchSchemaVersion, revokedDelegation, tsText } from '../core/registry-queries.js';
import { ROOT_ALGORITHM } from '../core/root-signed-bytes.js';
import { EnvironmentError } from './errors.js';

/** The schema that has the root columns (migrations/0006_root_of_trust.sql). */
export const ROOT_SCHEMA_VERSION = 6;

export async function assertRootSchema(db: pg.ClientBase): Promise<void> {
  const version = await fetchSchemaVersion(db);
  if (version < ROOT_SCHEMA_VERSION) {
    throw new EnvironmentError(
      `the registry has schema version ${version}; root signatures need version ${ROOT_SCHEMA_VERSION}: ` +
        'run registry-cli/migrate.sh first',
    );
  }
}

/** Record a root's public key for display (the gateway trusts only its config); false if it was there. */
export async function recordRootKey(
  db: pg.ClientBase,
  id: string,
  spkiDer: Buffer,
  description: string | null,
): Promise<boolean> {
  const r = await db.query(
    `INSERT INTO registry_root_keys (root_key_id, algorithm, public_key_spki_der, description)
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
    [id, ROOT_ALGORITHM, spkiDer, description],
  );
  return r.rowCount === 1;
}

export type RootMark = { readonly rootKeyId: string | null; readonly rootSignature: Buffer | null };

/** A key row as its root signs it, with the signature it carries. */
export type RootableKey = RootMark & {
  readonly keyId: string;
  readonly algorithm: string;
  readonly spkiDer: Buffer;
  readonly notBefore: string;
  readonly notAfter: string;
};

/** A scope row as its root signs it, with its key's window (a scope must lie within it). */
export type RootableScope = RootMark & {
  readonly id: string;
  readonly signingKeyId: string;
  readonly destination: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly keyNotBefore: string;
  readonly keyNotAfter: string;
  /** Its key's SPKI DER, which the scope's root signature binds. */
  readonly keySpkiDer: Buffer;
  /** A revoked row of the same delegation takes it away (core/registry-queries.ts revokedDelegation). */
  readonly revokedDelegation: boolean;
};

type MarkRecord = { root_key_id: string | null; root_signature: Buffer | null };
const mark = (r: MarkRecord): RootMark => ({ rootKeyId: r.root_key_id, rootSignature: r.root_signature });

type KeyRecord = MarkRecord & {
  key_id: string;
  algorithm: string;
  public_key_spki_der: Buffer;
  not_before: string;
  not_after: string;
};

/**
 * Active key rows (not revoked, not expired), locked FOR UPDATE; one key when `keyId` is given (active
 * or not, so a withdrawal can name any row).
 */
export async function rootableKeys(db: pg.ClientBase, keyId?: string): Promise<RootableKey[]> {
  const r = await db.query<KeyRecord>(
    `SELECT key_id, algorithm, public_key_spki_der, ${tsText('not_before')} AS not_before,
       ${tsText('not_after')} AS not_after, root_key_id, root_signature
     FROM principal_signing_keys
     WHERE ($1::text IS NULL AND revoked_at IS NULL AND not_after > now()) OR key_id = $1
     ORDER BY key_id LIMIT 10000 FOR UPDATE`,
    [keyId ?? null],
  );
  return r.rows.map((k) => ({
    keyId: k.key_id,
    algorithm: k.algorithm,
    spkiDer: k.public_key_spki_der,
    notBefore: k.not_before,
    notAfter: k.not_after,
    ...mark(k),
  }));
}

type ScopeRecord = MarkRecord & {
  id: string;
  signing_key_id: string;
  destination: string;
  not_before: string;
  not_after: string;
  k_not_before: string;
  k_not_after: string;
  k_spki: Buffer;
  revoked_delegation: boolean;
};

/** Active scope rows of active keys, locked FOR UPDATE; one row when `scopeId` is given. */
export async function rootableScopes(db: pg.ClientBase, scopeId?: string): Promise<RootableScope[]> {
  const r = await db.query<ScopeRecord>(
    `SELECT s.id::text AS id, s.signing_key_id, s.destination, ${tsText('s.not_before')} AS not_before,
       ${tsText('s.not_after')} AS not_after, s.root_key_id, s.root_signature,
       ${tsText('k.not_before')} AS k_not_before, ${tsText('k.not_after')} AS k_not_after,
       k.public_key_spki_der AS k_spki, ${revokedDelegation('s', 'r')} AS revoked_delegation
     FROM principal_key_permissions s JOIN principal_signing_keys k ON k.key_id = s.signing_key_id
     WHERE ($1::bigint IS NULL AND s.revoked_at IS NULL AND s.not_after > now()
            AND k.revoked_at IS NULL AND k.not_after > now())
        OR s.id = $1::bigint
     ORDER BY s.signing_key_id, s.destination, s.id LIMIT 10000 FOR UPDATE OF s`,
    [scopeId ?? null],
  );
  return r.rows.map((s) => ({
    id: s.id,
    signingKeyId: s.signing_key_id,
    destination: s.destination,
    notBefore: s.not_before,
    notAfter: s.not_after,
    keyNotBefore: s.k_not_before,
    keyNotAfter: s.k_not_after,
    keySpkiDer: s.k_spki,
    revokedDelegation: s.revoked_delegation,
    ...mark(s),
  }));
}

/** Set (or with nulls, clear) a key row's root signature. */
export async function setKeyRootSignature(db: pg.ClientBase, keyId: string, m: RootMark): Promise<void> {
  await db.query(
    `UPDATE principal_signing_keys SET root_key_id = $2, root_signature = $3, updated_at = now()
     WHERE key_id = $1`,
    [keyId, m.rootKeyId, m.rootSignature],
  );
}

/** Set (or with nulls, clear) a scope row's root signature. */
export async function setScopeRootSignature(db: pg.ClientBase, scopeId: string, m: RootMark): Promise<void> {
  await db.query(
    `UPDATE principal_key_permissions SET root_key_id = $2, root_signature = $3, updated_at = now()
     WHERE id = $1::bigint`,
    [scopeId, m.rootKeyId, m.rootSignature],
  );
}

export const UNROOTED: RootMark = { rootKeyId: null, rootSignature: null };
