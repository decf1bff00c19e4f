// Observe mode (docs/contract.md "Access requests", issue #16 item 5): policy.observe_identities lets a
// listed identity's CONNECT through when only a grant is missing (200, bytes flow, `CONNECT allowed` with
// policy_decision observe, an access request row, agent_gateway_observed_connects_total), and never when a
// row stands in the way (a bad signature, a revoked grant) or the key is not the one the identity's grants
// name; an unlisted identity is denied as ever. Real gateway process, real PostgreSQL.
import type { ClientHttp2Session } from 'node:http2';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { accessRequestId } from '../../core/access-request-id.js';
import { type Carrier, createCarrier, createPrincipalKey, type PrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant, revokePermission } from '../../dev-support/registry-seed.js';
import { runtimeLogin, waitForRequest } from '../support/access-requests.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  roundTrip,
  scrapeMetric,
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const OBSERVED = 'agent_gateway_observed_connects_total';

describe('access requests: observe mode', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let db: pg.Client;
  let dropRole: () => Promise<void>;
  let gw: GatewayProcess;
  let echo: Upstream;
  let principal: PrincipalKey;
  /** Listed, with one real grant (granted:443). */
  let newAgent: Carrier;
  /** Listed; its grant is under keyA, keyB claims the same identity. */
  let keyA: Carrier;
  let keyB: Carrier;
  /** Not listed. */
  let beta: Carrier;
  const sessions: ClientHttp2Session[] = [];

  const session = async (who: Carrier) => {
    const s = await connectH2(gw.port, { ca: gw.caPem, carrier: who });
    sessions.push(s);
    return s;
  };
  const observedCount = async () => (await scrapeMetric(gw.adminPort!, OBSERVED)) ?? 0;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'access_requests_observe');
    db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
    const login = await runtimeLogin(db, dbUrl);
    dropRole = login.drop;
    echo = await startEchoServer();
    principal = createPrincipalKey();
    newAgent = await createCarrier('agent-new-1');
    keyA = await createCarrier('agent-new-2');
    keyB = await createCarrier('agent-new-2');
    beta = await createCarrier('agent-beta');
    const to = (who: Carrier, destination: string) =>
      grant(dbUrl, {
        principalId: 'org-alice',
        principal,
        identity: who.identity,
        subjectSpkiDer: who.spkiDer,
        destination,
      });
    await to(newAgent, 'granted:443');
    await to(keyA, 'granted:443');
    await revokePermission(dbUrl, await to(newAgent, 'revoked:443'));
    // Signed by another key than org-alice's: its signature does not verify.
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      signWith: createPrincipalKey(),
      identity: newAgent.identity,
      subjectSpkiDer: newAgent.spkiDer,
      destination: 'forged:443',
    });
    const target = `127.0.0.1:${echo.port}`;
    gw = await startGatewayProcess({
      databaseUrl: login.url,
      config: {
        policy: {
          observe_identities: ['agent-new-?', 'other-*-x'],
          // Observed tunnels are re-checked by the full sweep (no notification names them).
          revocation_full_recheck_interval_ms: 1000,
          decision_cache_ttl_ms: 1000,
        },
        upstream: {
          overrides: Object.fromEntries(
            ['docstore:443', 'granted:443', 'revoked:443', 'forged:443', 'later:443'].map((d) => [d, target]),
          ),
        },
        requests: { flush_interval_ms: 50 },
      },
    });
  });

  afterAll(async () => {
    for (const s of sessions) await closeSession(s);
    await gw?.cleanup();
    await echo?.close();
    await dropRole?.();
    await db?.end();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('a listed identity with no grant for the destination: 200, bytes flow, logged and recorded as observe', async () => {
    const before = await observedCount();
    const s = await session(newAgent);
    const t = await openTunnel(s, 'docstore:443');
    expect(t.status).toBe(200);
    const echoed = await roundTrip(t.stream, Buffer.from('observed bytes'));
    expect(echoed.toString()).toBe('observed bytes');
    t.stream.close();

    const id = accessRequestId(newAgent.identity, newAgent.spkiDer, 'docstore:443');
    const [line] = await gw.waitForLogs('CONNECT allowed', (l) => l['destination'] === 'docstore:443');
    expect(line).toMatchObject({
      source_identity: 'agent-new-1',
      policy_decision: 'observe',
      observed_deny_reason: 'no_permission',
      deny_reason: null,
      permission_id: null,
      request_id: id,
    });
    const row = await waitForRequest(db, id);
    expect(row).toMatchObject({
      subject_identity: 'agent-new-1',
      destination: 'docstore:443',
      last_deny_reason: 'no_permission',
      status: 'pending',
      request_count: 1,
    });
    expect(await observedCount()).toBe(before + 1);

    // Its real grant is used as a grant, not observed.
    const real = await openTunnel(s, 'granted:443');
    expect(real.status).toBe(200);
    real.stream.close();
    const [allowed] = await gw.waitForLogs('CONNECT allowed', (l) => l['destination'] === 'granted:443');
    expect(allowed).toMatchObject({ policy_decision: 'allow', source_identity: 'agent-new-1' });
    expect(allowed?.['permission_id']).toMatch(/^perm-/);
    expect(await observedCount()).toBe(before + 1);
  });

  it('a row that does not count is never observed through: bad signature, revoked grant', async () => {
    const before = await observedCount();
    const s = await session(newAgent);
    const forged = await openTunnel(s, 'forged:443');
    expect(forged.status).toBe(403);
    expect(forged.headers['agent-gateway-deny-reason']).toBe('signature_invalid');
    // Only active rows are candidates, so a revoked grant is the policy's no_permission: still denied.
    const revoked = await openTunnel(s, 'revoked:443');
    expect(revoked.status).toBe(403);
    expect(revoked.headers['agent-gateway-deny-reason']).toBe('no_permission');
    expect(await observedCount()).toBe(before);
    const observedLines = gw
      .logs('CONNECT allowed')
      .filter((l) => l['destination'] === 'forged:443' || l['destination'] === 'revoked:443');
    expect(observedLines).toEqual([]);
  });

  it('another key claiming a listed identity whose grants name a different key: 403 no_permission', async () => {
    const before = await observedCount();
    const a = await session(keyA);
    const ok = await openTunnel(a, 'granted:443');
    expect(ok.status).toBe(200);
    ok.stream.close();

    const b = await session(keyB);
    for (const destination of ['granted:443', 'docstore:443']) {
      const t = await openTunnel(b, destination);
      expect(t.status, destination).toBe(403);
      expect(t.headers['agent-gateway-deny-reason']).toBe('no_permission');
    }
    expect(await observedCount()).toBe(before);
  });

  it('an observed tunnel lives while re-checks still observe it, and ends once a row for it stops counting', async () => {
    const s = await session(newAgent);
    const t = await openTunnel(s, 'later:443');
    expect(t.status).toBe(200);
    await new Promise((r) => setTimeout(r, 2500)); // two full re-checks
    expect((await roundTrip(t.stream, Buffer.from('still here'))).toString()).toBe('still here');

    // A real grant appears: the tunnel moves onto it. Then it is revoked: a revoked row is never
    // observed through, so the tunnel ends as any revoked tunnel does.
    const permissionId = await grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      identity: newAgent.identity,
      subjectSpkiDer: newAgent.spkiDer,
      destination: 'later:443',
    });
    const [moved] = await gw.waitForLogs(
      'tunnel now authorized by another permission row',
      (l) => l['permission_id'] === permissionId,
      5000,
    );
    expect(moved?.['previous_permission_id']).toBe('');
    const ended = closed(t.stream, 5000);
    await revokePermission(dbUrl, permissionId);
    await ended;
    const [line] = await gw.waitForLogs('tunnel closed', (l) => l['destination'] === 'later:443');
    expect(line).toMatchObject({ end_reason: 'revoked', permission_id: permissionId });
  });

  it('an identity not on the list: 403 no_permission', async () => {
    const before = await observedCount();
    const t = await openTunnel(await session(beta), 'docstore:443');
    expect(t.status).toBe(403);
    expect(t.headers['agent-gateway-deny-reason']).toBe('no_permission');
    expect(t.headers['agent-gateway-request-id']).toBe(
      accessRequestId(beta.identity, beta.spkiDer, 'docstore:443'),
    );
    expect(await observedCount()).toBe(before);
  });
});
