// Access requests as the tests read them (docs/contract.md "Access requests"): the rows a gateway wrote,
// waited for (the gateway writes them in batches, a flush interval after the 403), and a login role in
// agent_gateway_runtime to run the gateway as, so the writes are checked under the role operators use.
import { randomBytes } from 'node:crypto';
import type pg from 'pg';

export type RequestRow = {
  readonly request_id: string;
  readonly subject_identity: string;
  readonly subject_public_key_spki_der: Buffer;
  readonly subject_spki_sha256: string;
  readonly destination: string;
  readonly first_seen: Date;
  readonly last_seen: Date;
  readonly request_count: number;
  readonly last_deny_reason: string;
  readonly status: string;
  readonly permission_id: string | null;
  readonly decided_at: Date | null;
  readonly decided_by: string | null;
};

export async function requestRows(c: pg.ClientBase, where = 'true', values: unknown[] = []) {
  const r = await c.query<RequestRow>(
    `SELECT request_id, subject_identity, subject_public_key_spki_der, subject_spki_sha256, destination,
            first_seen, last_seen, request_count::int AS request_count, last_deny_reason, status,
            permission_id, decided_at, decided_by
       FROM access_requests WHERE ${where} ORDER BY first_seen, request_id`,
    values,
  );
  return r.rows;
}

/** The row `id` once `ready` holds for it (polling; the gateway flushes every flush_interval_ms). */
export async function waitForRequest(
  c: pg.ClientBase,
  id: string,
  ready: (row: RequestRow) => boolean = () => true,
  timeoutMs = 5000,
): Promise<RequestRow> {
  const deadline = Date.now() + timeoutMs;
  let last: RequestRow | undefined;
  while (Date.now() < deadline) {
    [last] = await requestRows(c, 'request_id = $1', [id]);
    if (last !== undefined && ready(last)) return last;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`access request ${id} not as expected within ${timeoutMs} ms: ${JSON.stringify(last)}`);
}

/** A LOGIN role in agent_gateway_runtime and `url` rewritten to log in as it; drop() removes the role. */
export async function runtimeLogin(
  admin: pg.ClientBase,
  url: string,
): Promise<{ url: string; drop(): Promise<void> }> {
  const role = `agw_rt_${randomBytes(4).toString('hex')}`;
  await admin.query(`CREATE ROLE ${role} LOGIN IN ROLE agent_gateway_runtime`);
  const u = new URL(url);
  u.username = role;
  u.password = '';
  return {
    url: u.toString(),
    async drop() {
      await admin.query(`DROP ROLE IF EXISTS ${role}`);
    },
  };
}
