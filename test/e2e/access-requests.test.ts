// Access requests (docs/contract.md "Access requests"), phase 1 of issue #16: a CONNECT denied because no
// grant counts is answered 403 with agent-gateway-request-id at once, and leaves one row per identity +
// key + destination that later denials count on; other denials and allowed CONNECTs leave nothing; a
// dismissed row stays quiet for requests.dismiss_quiet_hours, an approved one re-opens. The gateway runs
// as a login role in agent_gateway_runtime, the role operators give it. Real gateway process, real
// PostgreSQL.
import type { ClientHttp2Session } from 'node:http2';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { accessRequestId } from '../../core/access-request-id.js';
import { type Carrier, createCarrier, createPrincipalKey, type PrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant, seedPermission } from '../../dev-support/registry-seed.js';
import { requestRows, runtimeLogin, waitForRequest } from '../support/access-requests.js';
import {
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  startGatewayProcess,
  type TunnelResult,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const FLUSH_MS = 50;

describe('access requests', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let db: pg.Client;
  let dropRole: () => Promise<void>;
  let gw: GatewayProcess;
  let echo: Upstream;
  let agent: Carrier;
  let principal: PrincipalKey;
  let session: ClientHttp2Session;

  const idOf = (destination: string, who: Carrier = agent) =>
    accessRequestId(who.identity, who.spkiDer, destination);

  /** CONNECT `authority` on the agent's session and collect the answer. */
  const connect = async (authority: string): Promise<TunnelResult> => openTunnel(session, authority);

  /** A denial for a destination of its own, then its row: every earlier record is written by then. */
  let barriers = 0;
  const barrier = async () => {
    const destination = `barrier-${++barriers}.example:443`;
    const t = await connect(destination);
    expect(t.status).toBe(403);
    await waitForRequest(db, idOf(destination));
  };

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'access_requests');
    db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
    const login = await runtimeLogin(db, dbUrl);
    dropRole = login.drop;
    echo = await startEchoServer();
    agent = await createCarrier('agent-beta');
    principal = createPrincipalKey();
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'granted:443',
    });
    gw = await startGatewayProcess({
      databaseUrl: login.url,
      config: {
        upstream: {
          overrides: {
            'granted:443': `127.0.0.1:${echo.port}`,
            'metadata:443': '169.254.169.254:443',
          },
        },
        requests: { flush_interval_ms: FLUSH_MS },
      },
    });
    session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
  });

  afterAll(async () => {
    if (session !== undefined) await closeSession(session);
    await gw?.cleanup();
    await echo?.close();
    await dropRole?.();
    await db?.end();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('a denial without a grant: 403 with the request id at once, then one row that later denials count on', async () => {
    const id = idOf('docstore:443');
    const t = await connect('DocStore:443');
    expect(t.status).toBe(403);
    expect(t.headers['agent-gateway-deny-reason']).toBe('no_permission');
    expect(t.headers['agent-gateway-request-id']).toBe(id);

    const first = await waitForRequest(db, id);
    expect(first).toMatchObject({
      subject_identity: 'agent-beta',
      destination: 'docstore:443',
      request_count: 1,
      last_deny_reason: 'no_permission',
      status: 'pending',
      permission_id: null,
      decided_at: null,
    });
    expect(first.subject_public_key_spki_der.equals(agent.spkiDer)).toBe(true);
    expect(first.first_seen.getTime()).toBe(first.last_seen.getTime());
    const [line] = await gw.waitForLogs('CONNECT denied', (l) => l['request_id'] === id);
    expect(line).toMatchObject({ deny_reason: 'no_permission', destination: 'docstore:443', status: 403 });

    for (let i = 0; i < 3; i++) {
      const again = await connect('docstore:443');
      expect(again.status).toBe(403);
      expect(again.headers['agent-gateway-request-id']).toBe(id);
    }
    const counted = await waitForRequest(db, id, (r) => r.request_count === 4);
    expect(counted.last_seen.getTime()).toBeGreaterThan(first.last_seen.getTime());
    expect(counted.first_seen.getTime()).toBe(first.first_seen.getTime());
    expect(await requestRows(db, 'destination = $1', ['docstore:443'])).toHaveLength(1);
  });

  it('an allowed CONNECT, and denials a grant would not fix, record nothing and name no request', async () => {
    const allowed = await connect('granted:443');
    expect(allowed.status).toBe(200);
    allowed.stream.close();

    // Policy allows, the address guard refuses: not a missing grant.
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'metadata:443',
    });
    const guarded = await connect('metadata:443');
    expect(guarded.status).toBe(403);
    expect(guarded.headers['agent-gateway-deny-reason']).toBe('destination_address_denied');
    expect(guarded.headers['agent-gateway-request-id']).toBeUndefined();

    // A row whose signature does not verify is not a missing grant either.
    await seedPermission(dbUrl, {
      permissionId: 'perm-forged',
      principalId: 'org-alice',
      principal,
      signWith: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'forged:443',
    });
    const forged = await connect('forged:443');
    expect(forged.status).toBe(403);
    expect(forged.headers['agent-gateway-deny-reason']).not.toBe('no_permission');
    expect(forged.headers['agent-gateway-request-id']).toBeUndefined();

    // No certificate identity at all.
    const anonymous = await connectH2(gw.port, { ca: gw.caPem });
    try {
      const t = await openTunnel(anonymous, 'docstore:443');
      expect(t.status).toBe(403);
      expect(t.headers['agent-gateway-request-id']).toBeUndefined();
    } finally {
      await closeSession(anonymous);
    }

    await barrier();
    const rows = await requestRows(db, 'destination = ANY($1)', [
      ['granted:443', 'metadata:443', 'forged:443'],
    ]);
    expect(rows).toEqual([]);
  });

  it('a dismissed request stays quiet for dismiss_quiet_hours; an approved one denied again re-opens', async () => {
    for (const d of ['quiet:443', 'stale:443', 'approved:443', 'raced:443']) {
      expect((await connect(d)).status).toBe(403);
      await waitForRequest(db, idOf(d));
    }
    await db.query(
      `UPDATE access_requests SET status = 'dismissed', decided_at = now() WHERE request_id = $1`,
      [idOf('quiet:443')],
    );
    await db.query(
      `UPDATE access_requests SET status = 'dismissed', decided_at = now() - interval '25 hours'
        WHERE request_id = $1`,
      [idOf('stale:443')],
    );
    await db.query(
      `UPDATE access_requests SET status = 'approved', decided_at = now(), decided_by = 'org-alice',
              permission_id = 'perm-approved' WHERE request_id = $1`,
      [idOf('approved:443')],
    );
    // A denial that raced the approval (seen after its transaction began, before it committed): the
    // approval's grant counts, so the row stays approved.
    const live = await db.query<{ id: string }>(
      `SELECT permission_id AS id FROM permission_registry WHERE destination = 'granted:443' AND revoked_at IS NULL`,
    );
    await db.query(
      `UPDATE access_requests SET status = 'approved', decided_at = now() - interval '1 minute',
              decided_by = 'org-alice', permission_id = $2 WHERE request_id = $1`,
      [idOf('raced:443'), live.rows[0]?.id],
    );
    for (const d of ['quiet:443', 'stale:443', 'approved:443', 'raced:443']) {
      const t = await connect(d);
      expect(t.status).toBe(403);
      expect(t.headers['agent-gateway-request-id']).toBe(idOf(d));
    }
    const quiet = await waitForRequest(db, idOf('quiet:443'), (r) => r.request_count === 2);
    expect(quiet.status).toBe('dismissed');
    expect(quiet.decided_at).not.toBeNull();
    const stale = await waitForRequest(db, idOf('stale:443'), (r) => r.request_count === 2);
    expect(stale).toMatchObject({ status: 'pending', decided_at: null });
    const approved = await waitForRequest(db, idOf('approved:443'), (r) => r.request_count === 2);
    expect(approved).toMatchObject({
      status: 'pending',
      decided_at: null,
      decided_by: null,
      permission_id: null,
    });
    const raced = await waitForRequest(db, idOf('raced:443'), (r) => r.request_count === 2);
    expect(raced).toMatchObject({
      status: 'approved',
      decided_by: 'org-alice',
      permission_id: live.rows[0]?.id,
    });
  });
});

describe('the roles on access_requests', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let c: pg.Client;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'access_request_roles');
    c = new pg.Client({ connectionString: dbUrl });
    await c.connect();
  });

  afterAll(async () => {
    await c?.end();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  const TABLES = [
    'agent_gateway_schema_version',
    'principal_signing_keys',
    'principal_key_permissions',
    'permission_registry',
    'registry_root_keys',
    'retired_principal_keys',
    'access_requests',
  ];
  // [role, table, privileges it has; every other of SELECT/INSERT/UPDATE/DELETE/TRUNCATE it lacks]
  const MATRIX: readonly (readonly [string, string, readonly string[]])[] = [
    ...TABLES.map((t) => ['agent_gateway_requests', t, t === 'access_requests' ? ['SELECT'] : []] as const),
    // The gateway's role reads the registry and writes nothing but (column by column, next test) the
    // recorded columns of access_requests.
    ...TABLES.map((t) => ['agent_gateway_runtime', t, ['SELECT']] as const),
    ['agent_gateway_admin', 'access_requests', ['SELECT', 'UPDATE']],
  ];
  it.each(MATRIX)('%s on %s: exactly %j', async (role, table, has) => {
    for (const privilege of ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) {
      const r = await c.query<{ ok: boolean }>('SELECT has_table_privilege($1, $2, $3) AS ok', [
        role,
        table,
        privilege,
      ]);
      expect(r.rows[0]?.ok, `${role} ${privilege} ${table}`).toBe(has.includes(privilege));
    }
  });

  it('the recording role writes only the recorded and counted columns', async () => {
    const can = async (column: string, privilege: string) =>
      (
        await c.query<{ ok: boolean }>(
          "SELECT has_column_privilege('agent_gateway_requests', 'access_requests', $1, $2) AS ok",
          [column, privilege],
        )
      ).rows[0]?.ok;
    for (const column of [
      'request_id',
      'subject_identity',
      'destination',
      'request_count',
      'last_deny_reason',
    ])
      expect(await can(column, 'INSERT'), `INSERT ${column}`).toBe(true);
    for (const column of ['status', 'permission_id', 'decided_at', 'decided_by', 'first_seen', 'last_seen'])
      expect(await can(column, 'INSERT'), `INSERT ${column}`).toBe(false);
    for (const column of ['request_count', 'last_seen', 'status', 'permission_id'])
      expect(await can(column, 'UPDATE'), `UPDATE ${column}`).toBe(true);
    for (const column of [
      'request_id',
      'subject_identity',
      'subject_public_key_spki_der',
      'destination',
      'first_seen',
    ])
      expect(await can(column, 'UPDATE'), `UPDATE ${column}`).toBe(false);
  });

  it('the runtime role can write a request but nothing else; a row must carry its own id', async () => {
    const spki = (await createCarrier('agent-gamma')).spkiDer;
    const id = accessRequestId('agent-gamma', spki, 'docstore:443');
    const insert = (requestId: string) =>
      c.query(
        `INSERT INTO access_requests (request_id, subject_identity, subject_public_key_spki_der,
                                      subject_spki_sha256, destination, last_deny_reason)
         VALUES ($1, 'agent-gamma', $2, encode(sha256($2), 'hex'), 'docstore:443', 'no_permission')`,
        [requestId, spki],
      );
    await c.query('BEGIN');
    try {
      await c.query('SET LOCAL ROLE agent_gateway_runtime');
      await insert(id);
      await c.query('UPDATE access_requests SET request_count = request_count + 1 WHERE request_id = $1', [
        id,
      ]);
      await c.query('SAVEPOINT s');
      await expect(
        c.query(
          `INSERT INTO permission_registry (permission_id, signing_key_id, subject_identity,
             subject_public_key_spki_der, destination, not_before, not_after, signature)
           VALUES ('p', 'k', 'agent-gamma', $1, 'docstore:443', now(), now() + interval '1 day', '\\x00')`,
          [spki],
        ),
      ).rejects.toThrow(/permission denied/);
      await c.query('ROLLBACK TO SAVEPOINT s');
      await expect(c.query('DELETE FROM access_requests WHERE request_id = $1', [id])).rejects.toThrow(
        /permission denied/,
      );
      await c.query('ROLLBACK TO SAVEPOINT s');
      // Another triple's id under this triple: the CHECK holds the row to core/access-request-id.ts.
      await expect(insert(accessRequestId('agent-gamma', spki, 'other:443'))).rejects.toThrow(
        /access_requests_id_matches/,
      );
    } finally {
      await c.query('ROLLBACK');
    }
  });
});
