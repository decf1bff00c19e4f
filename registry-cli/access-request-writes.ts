/**
 * The registry CLI's SQL for access requests (docs/contract.md "Access requests", migrations/0007): the
 * gateway inserts and bumps the rows, principals read them and decide (approve, dismiss). A decision is
 * one UPDATE guarded by `status = 'pending'`, so it takes the row lock only at the end of its transaction
 * (the gateway's recording lane is never kept waiting on a principal) and two principals deciding the same
 * request cannot both succeed. Times leave PostgreSQL as canonical text (tsText).
 */
import type pg from 'pg';
import { ACCESS_REQUESTS_SCHEMA_VERSION } from '../core/access-request-id.js';
import { fetchSchemaVersion, tsText } from '../core/registry-queries.js';
import { EnvironmentError } from './errors.js';

export type AccessRequestStatus = 'pending' | 'approved' | 'dismissed';

export type AccessRequestRecord = {
  readonly requestId: string;
  readonly subjectIdentity: string;
  readonly subjectSpkiDer: Buffer;
  readonly subjectSpkiSha256: string;
  readonly destination: string;
  readonly firstSeen: string;
  readonly lastSeen: string;
  readonly requestCount: number;
  readonly lastDenyReason: string;
  readonly status: AccessRequestStatus;
  readonly permissionId: string | null;
  readonly decidedAt: string | null;
  readonly decidedBy: string | null;
};

const COLUMNS = `r.request_id, r.subject_identity, r.subject_public_key_spki_der, r.subject_spki_sha256,
  r.destination, ${tsText('r.first_seen')} AS first_seen, ${tsText('r.last_seen')} AS last_seen,
  r.request_count::text AS request_count, r.last_deny_reason, r.status, r.permission_id,
  ${tsText('r.decided_at')} AS decided_at, r.decided_by`;

type DbRecord = {
  request_id: string;
  subject_identity: string;
  subject_public_key_spki_der: Buffer;
  subject_spki_sha256: string;
  destination: string;
  first_seen: string;
  last_seen: string;
  request_count: string;
  last_deny_reason: string;
  status: AccessRequestStatus;
  permission_id: string | null;
  decided_at: string | null;
  decided_by: string | null;
};

function record(r: DbRecord): AccessRequestRecord {
  return {
    requestId: r.request_id,
    subjectIdentity: r.subject_identity,
    subjectSpkiDer: r.subject_public_key_spki_der,
    subjectSpkiSha256: r.subject_spki_sha256,
    destination: r.destination,
    firstSeen: r.first_seen,
    lastSeen: r.last_seen,
    requestCount: Number(r.request_count),
    lastDenyReason: r.last_deny_reason,
    status: r.status,
    permissionId: r.permission_id,
    decidedAt: r.decided_at,
    decidedBy: r.decided_by,
  };
}

/** Access requests exist from schema 7; below it the commands say how to get there (exit 2). */
export async function assertAccessRequestSchema(db: pg.ClientBase): Promise<void> {
  const version = await fetchSchemaVersion(db);
  if (version < ACCESS_REQUESTS_SCHEMA_VERSION) {
    throw new EnvironmentError(
      `the registry has schema version ${version}; access requests need version ` +
        `${ACCESS_REQUESTS_SCHEMA_VERSION}: run registry-cli/migrate.sh first`,
    );
  }
}

/** Requests, most recently denied first; `pending` only the undecided ones. */
export async function listAccessRequests(
  db: pg.ClientBase,
  filter: { readonly pendingOnly: boolean; readonly identity?: string | undefined; readonly limit: number },
): Promise<AccessRequestRecord[]> {
  const r = await db.query<DbRecord>(
    `SELECT ${COLUMNS} FROM access_requests r
     WHERE ($1::boolean IS FALSE OR r.status = 'pending') AND ($2::text IS NULL OR r.subject_identity = $2)
     ORDER BY r.last_seen DESC, r.request_id
     LIMIT $3`,
    [filter.pendingOnly, filter.identity ?? null, filter.limit],
  );
  return r.rows.map(record);
}

export async function readAccessRequest(
  db: pg.ClientBase,
  requestId: string,
): Promise<AccessRequestRecord | undefined> {
  const r = await db.query<DbRecord>(`SELECT ${COLUMNS} FROM access_requests r WHERE r.request_id = $1`, [
    requestId,
  ]);
  return r.rows[0] === undefined ? undefined : record(r.rows[0]);
}

/**
 * Mark a pending request approved with the permission that grants it; undefined when it was no longer
 * pending (decided concurrently), so the caller rolls its signed row back.
 */
export async function markApproved(
  db: pg.ClientBase,
  requestId: string,
  permissionId: string,
  keyId: string,
): Promise<AccessRequestRecord | undefined> {
  const r = await db.query<DbRecord>(
    `UPDATE access_requests r
     SET status = 'approved', permission_id = $2, decided_at = now(), decided_by = $3
     WHERE r.request_id = $1 AND r.status = 'pending'
     RETURNING ${COLUMNS}`,
    [requestId, permissionId, keyId],
  );
  return r.rows[0] === undefined ? undefined : record(r.rows[0]);
}

/** Mark a pending request dismissed; undefined when it was not pending. */
export async function markDismissed(
  db: pg.ClientBase,
  requestId: string,
): Promise<AccessRequestRecord | undefined> {
  const r = await db.query<DbRecord>(
    `UPDATE access_requests r
     SET status = 'dismissed', decided_at = now(), decided_by = NULL
     WHERE r.request_id = $1 AND r.status = 'pending'
     RETURNING ${COLUMNS}`,
    [requestId],
  );
  return r.rows[0] === undefined ? undefined : record(r.rows[0]);
}

/**
 * Active permissions of one agent key under an identity: the evidence that the key is the agent's (a
 * principal granted it before), which approve asks for before signing a request (docs/contract.md
 * "Access requests").
 */
export async function activePermissions(
  db: pg.ClientBase,
  identity: string,
  spkiDer: Buffer,
): Promise<number> {
  const r = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM permission_registry
     WHERE subject_identity = $1 AND subject_public_key_spki_der = $2
       AND revoked_at IS NULL AND not_after > now()`,
    [identity, spkiDer],
  );
  return r.rows[0]!.n;
}
