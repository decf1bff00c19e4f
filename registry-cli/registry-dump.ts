/**
 * The registry dump (docs/contract.md "Receipts", `registry dump`): the three tables the policy reads,
 * every row, timestamps as canonical text (core/registry-queries.ts tsText) and bytea as hex, so that
 * `receipts verify --registry-dump` judges receipts offline with the same rows `--registry` reads live.
 * Read back into the row types core/policy.ts evaluates.
 */
import { errorText } from '../core/error-text.js';
import type { PermissionRow, ScopeRow, SignerRow } from '../core/policy.js';
import { fetchSchemaVersion, type Queryable, tsText } from '../core/registry-queries.js';
import { withRegistry } from './db.js';
import type { DatabaseTarget } from './env.js';
import { UsageError } from './errors.js';

export const REGISTRY_DUMP_FORMAT = 'agent-gateway-registry-dump-v1';

export type DumpSigningKey = {
  key_id: string;
  algorithm: string;
  public_key_spki_der: string;
  not_before: string;
  not_after: string;
  revoked_at: string | null;
  root_key_id: string | null;
  root_signature: string | null;
};

export type DumpScope = {
  id: string;
  signing_key_id: string;
  destination: string;
  not_before: string;
  not_after: string;
  revoked_at: string | null;
  root_key_id: string | null;
  root_signature: string | null;
};

export type DumpPermission = {
  permission_id: string;
  signing_key_id: string;
  subject_identity: string;
  subject_public_key_spki_der: string;
  destination: string;
  not_before: string;
  not_after: string;
  revoked_at: string | null;
  signature: string;
};

export type RegistryDump = {
  format: typeof REGISTRY_DUMP_FORMAT;
  dumped_at: string;
  schema_version: number;
  principal_signing_keys: DumpSigningKey[];
  principal_key_permissions: DumpScope[];
  permission_registry: DumpPermission[];
};

/** The rows as the policy takes them. */
export type RegistryRows = {
  readonly keys: ReadonlyMap<string, SignerRow>;
  readonly scopes: readonly ScopeRow[];
  readonly permissions: ReadonlyMap<string, PermissionRow>;
};

// The root columns exist from migration 6 on; to_jsonb yields NULL where they do not (as the gateway's
// candidate query reads them), and a bytea inside JSON is `\x<hex>`.
const ROOT_COLUMNS = (alias: string) => `to_jsonb(${alias}) ->> 'root_key_id' AS root_key_id,
  substr(to_jsonb(${alias}) ->> 'root_signature', 3) AS root_signature`;
const WINDOW = (alias: string) => `${tsText(`${alias}.not_before`)} AS not_before,
  ${tsText(`${alias}.not_after`)} AS not_after, ${tsText(`${alias}.revoked_at`)} AS revoked_at`;

/** Read every row; run inside one REPEATABLE READ transaction so the three tables agree. */
export async function readRegistryDump(db: Queryable): Promise<RegistryDump> {
  const now = await db.query<{ now: string }>(`SELECT ${tsText('now()')} AS now`);
  const keys = await db.query<DumpSigningKey>(`
    SELECT k.key_id, k.algorithm, encode(k.public_key_spki_der, 'hex') AS public_key_spki_der,
      ${WINDOW('k')}, ${ROOT_COLUMNS('k')}
    FROM principal_signing_keys k ORDER BY k.key_id`);
  const scopes = await db.query<DumpScope>(`
    SELECT s.id::text AS id, s.signing_key_id, s.destination, ${WINDOW('s')}, ${ROOT_COLUMNS('s')}
    FROM principal_key_permissions s ORDER BY s.id`);
  const permissions = await db.query<DumpPermission>(`
    SELECT p.permission_id, p.signing_key_id, p.subject_identity,
      encode(p.subject_public_key_spki_der, 'hex') AS subject_public_key_spki_der, p.destination,
      ${WINDOW('p')}, encode(p.signature, 'hex') AS signature
    FROM permission_registry p ORDER BY p.permission_id`);
  return {
    format: REGISTRY_DUMP_FORMAT,
    dumped_at: now.rows[0]!.now,
    schema_version: await fetchSchemaVersion(db),
    principal_signing_keys: keys.rows,
    principal_key_permissions: scopes.rows,
    permission_registry: permissions.rows,
  };
}

/** The dump of a live registry, read in one read-only snapshot. */
export function dumpFromDatabase(target: DatabaseTarget): Promise<RegistryDump> {
  return withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      await db.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      return readRegistryDump(db);
    }),
  );
}

/** Parse a dump file's text; a malformed one is a usage error naming the file and what is wrong. */
export function parseRegistryDump(text: string, name: string): RegistryDump {
  const fail = (why: string): never => {
    throw new UsageError(`--registry-dump ${name}: ${why}`);
  };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    return fail(`not JSON: ${errorText(err)}`);
  }
  const d = parsed as Partial<RegistryDump> | null;
  if (d === null || typeof d !== 'object' || d.format !== REGISTRY_DUMP_FORMAT)
    return fail(`not a registry dump (format is not ${REGISTRY_DUMP_FORMAT})`);
  for (const table of [
    'principal_signing_keys',
    'principal_key_permissions',
    'permission_registry',
  ] as const) {
    if (!Array.isArray(d[table])) fail(`${table} is not a list`);
  }
  return d as RegistryDump;
}

const hex = (s: string | null): Buffer | null => (s === null ? null : Buffer.from(s, 'hex'));

export function dumpRows(d: RegistryDump): RegistryRows {
  const keys = new Map<string, SignerRow>();
  for (const k of d.principal_signing_keys) {
    keys.set(k.key_id, {
      keyId: k.key_id,
      algorithm: k.algorithm,
      spkiDer: Buffer.from(k.public_key_spki_der, 'hex'),
      notBefore: k.not_before ?? '',
      notAfter: k.not_after ?? '',
      revokedAt: k.revoked_at,
      rootKeyId: k.root_key_id,
      rootSignature: hex(k.root_signature),
    });
  }
  const scopes: ScopeRow[] = d.principal_key_permissions.map((s) => ({
    id: s.id,
    signingKeyId: s.signing_key_id,
    destination: s.destination,
    notBefore: s.not_before ?? '',
    notAfter: s.not_after ?? '',
    revokedAt: s.revoked_at,
    rootKeyId: s.root_key_id,
    rootSignature: hex(s.root_signature),
  }));
  const permissions = new Map<string, PermissionRow>();
  for (const p of d.permission_registry) {
    permissions.set(p.permission_id, {
      permissionId: p.permission_id,
      signingKeyId: p.signing_key_id,
      subjectIdentity: p.subject_identity,
      subjectSpkiDer: Buffer.from(p.subject_public_key_spki_der, 'hex'),
      destination: p.destination,
      notBefore: p.not_before ?? '',
      notAfter: p.not_after ?? '',
      revokedAt: p.revoked_at,
      signature: Buffer.from(p.signature, 'hex'),
    });
  }
  return { keys, scopes, permissions };
}
