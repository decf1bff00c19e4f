/**
 * Writing one batch of access requests (docs/contract.md "Access requests"): the gateway's only registry
 * write, and only to access_requests (migrations/0007: the runtime role is a member of
 * agent_gateway_requests). One transaction: an advisory lock that every gateway process takes for this,
 * so that counting pending rows and inserting new ones is one step across all of them and
 * requests.max_pending holds exactly; then one statement that bumps the rows that exist and inserts new
 * ones while there is room.
 */
import type { Queryable } from '../core/registry-queries.js';
import type { BufferedRequest } from './access-request-buffer.js';

// Any 64-bit constant of its own (core/migrate.ts holds the migration runner's).
const RECORD_LOCK_KEY = '5726400016';

export type StoreOptions = {
  readonly maxPending: number;
  readonly dismissQuietHours: number;
};

/** Denials written (bumped onto existing rows or inserted as new ones) and refused for want of room. */
export type StoreResult = { readonly recorded: number; readonly droppedFull: number };

// A row is re-opened (back to pending, decision cleared) by a denial that happened after its decision:
// for an approved row only when the grant it got no longer counts (revoked or ended; a denial that
// raced the approval, seen after its transaction began but before it committed, must not undo it), and
// only after
// requests.dismiss_quiet_hours for a dismissed one. The denial's time is the database's now() minus the
// age the gateway measured on its own monotonic clock, so no clock skew between hosts enters the rule.
const UPSERT_SQL = `
WITH batch AS (
  SELECT b.*, now() - b.age_ms * interval '1 millisecond' AS seen_at
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bigint[], $6::text[], $7::bigint[])
         WITH ORDINALITY AS b(request_id, identity, spki, destination, n, reason, age_ms, ord)
),
reopen AS (
  SELECT a.request_id,
         (a.status = 'approved' AND b.seen_at > coalesce(a.decided_at, '-infinity')
          AND NOT EXISTS (SELECT 1 FROM permission_registry p
                           WHERE p.permission_id = a.permission_id AND p.revoked_at IS NULL
                             AND p.not_after > b.seen_at))
         OR (a.status = 'dismissed'
             AND b.seen_at > coalesce(a.decided_at, '-infinity') + $9::integer * interval '1 hour') AS yes
    FROM access_requests a JOIN batch b USING (request_id)
),
bumped AS (
  UPDATE access_requests a
     SET request_count = a.request_count + b.n,
         last_seen = now(),
         last_deny_reason = b.reason,
         status = CASE WHEN r.yes THEN 'pending' ELSE a.status END,
         permission_id = CASE WHEN r.yes THEN NULL ELSE a.permission_id END,
         decided_at = CASE WHEN r.yes THEN NULL ELSE a.decided_at END,
         decided_by = CASE WHEN r.yes THEN NULL ELSE a.decided_by END
    FROM batch b JOIN reopen r USING (request_id)
   WHERE a.request_id = b.request_id
  RETURNING b.n
),
inserted AS (
  INSERT INTO access_requests (request_id, subject_identity, subject_public_key_spki_der,
                               subject_spki_sha256, destination, request_count, last_deny_reason)
  SELECT b.request_id, b.identity, b.spki, encode(sha256(b.spki), 'hex'), b.destination, b.n, b.reason
    FROM batch b
   WHERE NOT EXISTS (SELECT 1 FROM access_requests a WHERE a.request_id = b.request_id)
   ORDER BY b.ord
   LIMIT greatest(0, $8::bigint - (SELECT count(*) FROM access_requests WHERE status = 'pending'))
  ON CONFLICT DO NOTHING
  RETURNING request_count
)
SELECT (SELECT coalesce(sum(n), 0) FROM bumped)::bigint AS bumped,
       (SELECT coalesce(sum(request_count), 0) FROM inserted)::bigint AS inserted`;

/** Write `batch`; `ageMs` gives each entry's age (ms since its latest denial) at the time of the call. */
export async function storeAccessRequests(
  db: Queryable,
  batch: readonly BufferedRequest[],
  ageMs: (entry: BufferedRequest) => number,
  opts: StoreOptions,
): Promise<StoreResult> {
  const total = batch.reduce((sum, e) => sum + e.count, 0);
  await db.query('BEGIN');
  try {
    await db.query('SELECT pg_advisory_xact_lock($1)', [RECORD_LOCK_KEY]);
    const r = await db.query<{ bumped: string; inserted: string }>({
      name: 'agent_gateway_record_access_requests',
      text: UPSERT_SQL,
      values: [
        batch.map((e) => e.requestId),
        batch.map((e) => e.identity),
        batch.map((e) => e.spkiDer),
        batch.map((e) => e.destination),
        batch.map((e) => e.count),
        batch.map((e) => e.reason),
        batch.map((e) => Math.max(0, Math.round(ageMs(e)))),
        opts.maxPending,
        opts.dismissQuietHours,
      ],
    });
    await db.query('COMMIT');
    const row = r.rows[0];
    const recorded = Number(row?.bumped ?? 0) + Number(row?.inserted ?? 0);
    return { recorded, droppedFull: total - recorded };
  } catch (err) {
    // A failed statement leaves the transaction aborted; the lane keeps a connection the server answered
    // on, so it must not go back to the pool inside one. A dead connection is dropped by the lane anyway.
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
