/**
 * Registry SQL shared by the gateway and the registry CLI. Every query is parameterized and bounded;
 * every timestamp leaves PostgreSQL as canonical text (see timestamp.ts), never through Date.
 */
import type pg from 'pg';
import type { AccessRequest, Candidate } from './policy.js';
import { formatTimestamp, type Micros } from './timestamp.js';

/** The original system's bound: a subject never needs more live rows than this for one destination. */
export const MAX_CANDIDATES = 16;
export const MAX_EXPLAIN_ROWS = 50;

/**
 * SQL expression rendering a timestamptz column as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (NULL stays NULL).
 * to_char prints a BC year without its era, so 2025-06-01 BC would read as 2025-06-01 AD: a row could
 * carry another row's signed text while comparing unequal in SQL (a revoked scope replayed BC). A BC
 * value gets " BC" appended, which no canonical timestamp matches: the row is invalid_row.
 */
export function tsText(column: string): string {
  return `(to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') ||
    CASE WHEN ${column} < '0001-01-01 00:00:00+00' THEN ' BC' ELSE '' END)`;
}

/**
 * The root columns of migrations/0006 read through to_jsonb, which yields NULL where the column does
 * not exist: one statement serves registries of every schema version (before 6 nothing is rooted).
 * A bytea becomes `\x<hex>` text in JSON (bytea_output = hex, the default; with `escape` the decode
 * fails and the lookup fails closed as registry_unavailable).
 */
function rootColumns(alias: 'k' | 's'): string {
  return `to_jsonb(${alias}) ->> 'root_key_id' AS ${alias}_root_key_id,
  decode(substr(to_jsonb(${alias}) ->> 'root_signature', 3), 'hex') AS ${alias}_root_signature`;
}

/**
 * Does another, revoked scope row take scope row `alias` away (docs/contract.md "Root of trust")? A
 * root signature covers a row's fields, not its history, so a revoked delegation must also void the
 * signatures the root made for it earlier: a copy of the revoked row's signed fields, and any row of
 * the same key and destination whose window starts before the revocation (an earlier window the root
 * signed before a refresh, put back by someone who kept it). A delegation granted again after the
 * revocation starts later (the CLI starts a new scope at now()), so it stays valid.
 */
export function revokedDelegation(alias: string, other: string): string {
  return `EXISTS (SELECT 1 FROM principal_key_permissions ${other}
          WHERE ${other}.revoked_at IS NOT NULL AND ${other}.signing_key_id = ${alias}.signing_key_id
            AND ${other}.destination = ${alias}.destination AND ${other}.id <> ${alias}.id
            AND ((${other}.not_before = ${alias}.not_before AND ${other}.not_after = ${alias}.not_after)
                 OR ${other}.revoked_at > ${alias}.not_before))`;
}

const CANDIDATE_COLUMNS = `
  p.permission_id, p.signing_key_id, p.subject_identity, p.subject_public_key_spki_der, p.destination,
  ${tsText('p.not_before')} AS p_not_before, ${tsText('p.not_after')} AS p_not_after,
  ${tsText('p.revoked_at')} AS p_revoked_at, p.signature,
  k.key_id AS k_key_id, k.algorithm AS k_algorithm, k.public_key_spki_der AS k_spki,
  ${tsText('k.not_before')} AS k_not_before, ${tsText('k.not_after')} AS k_not_after,
  ${tsText('k.revoked_at')} AS k_revoked_at,
  s.id::text AS s_id, s.signing_key_id AS s_signing_key_id, s.destination AS s_destination,
  ${tsText('s.not_before')} AS s_not_before, ${tsText('s.not_after')} AS s_not_after,
  ${tsText('s.revoked_at')} AS s_revoked_at,
  ${rootColumns('k')}, ${rootColumns('s')},
  ${revokedDelegation('s', 'r')} AS s_replays_revoked`;

// The signer's scope row for this destination that best explains the decision: an active covering row
// if there is one, else the active row closest to covering, else (explain only) a revoked one. Among
// those, a root-signed row that repeats no revoked row's signed fields first: with trust roots set it is
// the one that can allow (docs/contract.md "Root of trust").
const SCOPE_LATERAL = (activeOnly: boolean) => `
  LEFT JOIN LATERAL (
    SELECT sc.* FROM principal_key_permissions sc
    WHERE sc.signing_key_id = p.signing_key_id AND sc.destination = p.destination
      ${activeOnly ? 'AND sc.revoked_at IS NULL' : ''}
    ORDER BY (sc.revoked_at IS NULL) DESC,
             (sc.not_before <= p.not_before AND sc.not_after >= p.not_after) DESC,
             (to_jsonb(sc) ->> 'root_signature' IS NOT NULL) DESC,
             NOT ${revokedDelegation('sc', 'rv')} DESC,
             sc.not_after DESC, sc.id DESC
    LIMIT 1
  ) s ON true`;

/** Active candidates for one CONNECT, with `extra` columns first: $1 identity, $2 destination, $3 SPKI, $4 now. */
const activeCandidatesSql = (extra: string) => `
SELECT ${extra}${CANDIDATE_COLUMNS}
FROM permission_registry p
JOIN principal_signing_keys k ON k.key_id = p.signing_key_id
${SCOPE_LATERAL(true)}
WHERE p.subject_identity = $1 AND p.destination = $2 AND p.subject_public_key_spki_der = $3
  AND p.revoked_at IS NULL AND p.not_before <= $4::timestamptz AND p.not_after > $4::timestamptz
  AND k.revoked_at IS NULL AND k.not_before <= $4::timestamptz AND k.not_after > $4::timestamptz
ORDER BY p.not_after DESC, p.permission_id
LIMIT ${MAX_CANDIDATES}`;

export const ACTIVE_CANDIDATES_SQL = activeCandidatesSql('');

/**
 * The same on a streaming replica: every row also says how far the replica had replayed the primary's WAL
 * (docs/contract.md "Replicas"); NULL on a server that is not in recovery.
 */
export const REPLICA_CANDIDATES_SQL = activeCandidatesSql('pg_last_wal_replay_lsn()::text AS replay_lsn, ');

/** Every row for the triple, active or not, for `check`: $1 identity, $2 destination, $3 SPKI. */
export const EXPLAIN_CANDIDATES_SQL = `
SELECT ${CANDIDATE_COLUMNS}
FROM permission_registry p
LEFT JOIN principal_signing_keys k ON k.key_id = p.signing_key_id
${SCOPE_LATERAL(false)}
WHERE p.subject_identity = $1 AND p.destination = $2 AND p.subject_public_key_spki_der = $3
ORDER BY (p.revoked_at IS NULL) DESC, p.not_after DESC, p.permission_id
LIMIT ${MAX_EXPLAIN_ROWS}`;

type CandidateRecord = {
  permission_id: string;
  signing_key_id: string;
  subject_identity: string;
  subject_public_key_spki_der: Buffer;
  destination: string;
  p_not_before: string;
  p_not_after: string;
  p_revoked_at: string | null;
  signature: Buffer;
  k_key_id: string | null;
  k_algorithm: string | null;
  k_spki: Buffer | null;
  k_not_before: string | null;
  k_not_after: string | null;
  k_revoked_at: string | null;
  s_id: string | null;
  s_signing_key_id: string | null;
  s_destination: string | null;
  s_not_before: string | null;
  s_not_after: string | null;
  s_revoked_at: string | null;
  k_root_key_id: string | null;
  k_root_signature: Buffer | null;
  s_root_key_id: string | null;
  s_root_signature: Buffer | null;
  s_replays_revoked: boolean | null;
};

export function candidateFromRecord(r: CandidateRecord): Candidate {
  return {
    permission: {
      permissionId: r.permission_id,
      signingKeyId: r.signing_key_id,
      subjectIdentity: r.subject_identity,
      subjectSpkiDer: r.subject_public_key_spki_der,
      destination: r.destination,
      // to_char yields NULL for ±infinity; '' then fails timestamp parsing → invalid_row.
      notBefore: r.p_not_before ?? '',
      notAfter: r.p_not_after ?? '',
      revokedAt: r.p_revoked_at,
      signature: r.signature,
    },
    signer:
      r.k_key_id === null
        ? null
        : {
            keyId: r.k_key_id,
            algorithm: r.k_algorithm ?? '',
            spkiDer: r.k_spki ?? Buffer.alloc(0),
            notBefore: r.k_not_before ?? '',
            notAfter: r.k_not_after ?? '',
            revokedAt: r.k_revoked_at,
            rootKeyId: r.k_root_key_id,
            rootSignature: r.k_root_signature,
          },
    scope:
      r.s_id === null
        ? null
        : {
            id: r.s_id,
            signingKeyId: r.s_signing_key_id ?? '',
            destination: r.s_destination ?? '',
            notBefore: r.s_not_before ?? '',
            notAfter: r.s_not_after ?? '',
            revokedAt: r.s_revoked_at,
            rootKeyId: r.s_root_key_id,
            rootSignature: r.s_root_signature,
            replaysRevoked: r.s_replays_revoked === true,
          },
  };
}

/** Something that runs a query: a pg Pool, a PoolClient or a Client. */
export type Queryable = Pick<pg.ClientBase, 'query'>;

export async function fetchActiveCandidates(
  db: Queryable,
  request: AccessRequest,
  now: Micros,
): Promise<Candidate[]> {
  const result = await db.query<CandidateRecord>({
    name: 'agent_gateway_active_candidates',
    text: ACTIVE_CANDIDATES_SQL,
    values: [request.identity, request.destination, request.spkiDer, formatTimestamp(now)],
  });
  return result.rows.map(candidateFromRecord);
}

/** fetchActiveCandidates on a replica, with its replay position ('X/Y' text) when any row came back. */
export async function fetchReplicaCandidates(
  db: Queryable,
  request: AccessRequest,
  now: Micros,
): Promise<{ candidates: Candidate[]; replayLsn: string | null | undefined }> {
  const result = await db.query<CandidateRecord & { replay_lsn: string | null }>({
    name: 'agent_gateway_replica_candidates',
    text: REPLICA_CANDIDATES_SQL,
    values: [request.identity, request.destination, request.spkiDer, formatTimestamp(now)],
  });
  return { candidates: result.rows.map(candidateFromRecord), replayLsn: result.rows[0]?.replay_lsn };
}

export async function fetchExplainCandidates(db: Queryable, request: AccessRequest): Promise<Candidate[]> {
  const result = await db.query<CandidateRecord>({
    text: EXPLAIN_CANDIDATES_SQL,
    values: [request.identity, request.destination, request.spkiDer],
  });
  return result.rows.map(candidateFromRecord);
}

/** Read the registry schema version; 0 when the version table is missing. */
export async function fetchSchemaVersion(db: Queryable): Promise<number> {
  const exists = await db.query<{ t: string | null }>(
    `SELECT to_regclass('agent_gateway_schema_version')::text AS t`,
  );
  if (exists.rows[0]?.t == null) return 0;
  const r = await db.query<{ v: number | null }>(
    'SELECT max(version) AS v FROM agent_gateway_schema_version',
  );
  return r.rows[0]?.v ?? 0;
}

export const REGISTRY_CHANGE_CHANNEL = 'agent_gateway_registry_changed';
