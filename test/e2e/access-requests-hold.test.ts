// Hold mode (docs/contract.md "Access requests", issue #16 item 4): with requests.hold_ms set, a CONNECT
// denied no_permission for a key that has a grant elsewhere waits; a grant signed while it waits turns it
// into a 200 on the same stream (and live revocation still ends that tunnel), no grant means the same 403
// with the request id once hold_ms has passed, an unknown key is answered at once, and
// max_held_per_identity sends the excess its 403 at once. Real gateway process, real PostgreSQL.
import { type ClientHttp2Session, constants } from 'node:http2';
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
  type TunnelResult,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const HOLD_MS = 1500;
/** Slack for "answered at once" and for timers firing late on a loaded machine. */
const MARGIN_MS = 400;
const HELD = 'agent_gateway_access_requests_held';

type Timed = {
  readonly result: Promise<TunnelResult>;
  readonly settled: () => boolean;
  readonly ms: () => number;
};

describe('access requests: hold mode', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let db: pg.Client;
  let dropRole: () => Promise<void>;
  let gw: GatewayProcess;
  let echo: Upstream;
  let agent: Carrier;
  let principal: PrincipalKey;
  let session: ClientHttp2Session;

  const destinations = ['approve-me', 'revoke-me', 'wait-out', 'contrast', 'one', 'two', 'three'];

  /** CONNECT and note when it is answered. */
  const timedConnect = (s: ClientHttp2Session, authority: string): Timed => {
    const started = performance.now();
    let at: number | undefined;
    const result = openTunnel(s, authority).finally(() => {
      at = performance.now();
    });
    // Awaited by the test that cares; a failing assertion elsewhere must not leave it unhandled.
    result.catch(() => {});
    return { result, settled: () => at !== undefined, ms: () => (at ?? performance.now()) - started };
  };

  /** Until the gateway reports `n` held CONNECTs. */
  const heldBecomes = async (n: number, timeoutMs = 5000) => {
    const deadline = Date.now() + timeoutMs;
    let last: number | undefined;
    while (Date.now() < deadline) {
      last = await scrapeMetric(gw.adminPort!, HELD);
      if (last === n) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`${HELD} is ${last}, not ${n}, after ${timeoutMs} ms`);
  };

  const signGrant = (destination: string) =>
    grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination,
    });

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'access_requests_hold');
    db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
    const login = await runtimeLogin(db, dbUrl);
    dropRole = login.drop;
    echo = await startEchoServer();
    agent = await createCarrier('agent-beta');
    principal = createPrincipalKey();
    // The key has a grant somewhere: that is what makes it worth holding.
    await signGrant('granted:443');
    const overrides: Record<string, string> = { 'granted:443': `127.0.0.1:${echo.port}` };
    for (const d of destinations) overrides[`${d}:443`] = `127.0.0.1:${echo.port}`;
    gw = await startGatewayProcess({
      databaseUrl: login.url,
      config: {
        upstream: { overrides },
        requests: { flush_interval_ms: 50, hold_ms: HOLD_MS, max_held_per_identity: 2 },
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

  it('a grant signed while the CONNECT is held: 200 on the same stream, and bytes flow', async () => {
    const t = timedConnect(session, 'approve-me:443');
    await heldBecomes(1);
    // The request is recorded before the wait, so a principal can find it while the agent waits.
    await waitForRequest(db, accessRequestId(agent.identity, agent.spkiDer, 'approve-me:443'));
    expect(t.settled()).toBe(false);
    await signGrant('approve-me:443');
    const answer = await t.result;
    expect(answer.status).toBe(200);
    expect(t.ms()).toBeLessThan(HOLD_MS);
    const echoed = await roundTrip(answer.stream, Buffer.from('held, then approved'));
    expect(echoed.toString()).toBe('held, then approved');
    answer.stream.close();
    await heldBecomes(0);
    expect(
      await scrapeMetric(gw.adminPort!, 'agent_gateway_access_request_holds_total{outcome="approved"}'),
    ).toBe(1);
  });

  it('the grant approved during the hold is revoked: live revocation ends the tunnel', async () => {
    const t = timedConnect(session, 'revoke-me:443');
    await heldBecomes(1);
    const permissionId = await signGrant('revoke-me:443');
    const answer = await t.result;
    expect(answer.status).toBe(200);
    expect((await roundTrip(answer.stream, Buffer.from('ping'))).toString()).toBe('ping');
    await revokePermission(dbUrl, permissionId);
    await closed(answer.stream, 5000);
    const [line] = await gw.waitForLogs('tunnel closed', (l) => l['permission_id'] === permissionId);
    expect(line).toMatchObject({ end_reason: 'revoked' });
  });

  it('no grant within hold_ms: the same 403 with the request id, not before hold_ms', async () => {
    const t = timedConnect(session, 'wait-out:443');
    await heldBecomes(1);
    const answer = await t.result;
    expect(answer.status).toBe(403);
    expect(answer.headers['agent-gateway-deny-reason']).toBe('no_permission');
    expect(answer.headers['agent-gateway-request-id']).toBe(
      accessRequestId(agent.identity, agent.spkiDer, 'wait-out:443'),
    );
    expect(t.ms()).toBeGreaterThanOrEqual(HOLD_MS - 50);
    expect(t.ms()).toBeLessThan(HOLD_MS + 3000);
    await heldBecomes(0);
  });

  it('a key without any grant is answered at once, never held', async () => {
    const stranger = await createCarrier('agent-beta');
    const other = await connectH2(gw.port, { ca: gw.caPem, carrier: stranger });
    try {
      // The agent's own key is held meanwhile: the gateway does hold, just not this key.
      const known = timedConnect(session, 'contrast:443');
      await heldBecomes(1);
      const t = timedConnect(other, 'contrast:443');
      const answer = await t.result;
      expect(answer.status).toBe(403);
      expect(answer.headers['agent-gateway-deny-reason']).toBe('no_permission');
      expect(answer.headers['agent-gateway-request-id']).toBe(
        accessRequestId(stranger.identity, stranger.spkiDer, 'contrast:443'),
      );
      expect(t.ms()).toBeLessThan(MARGIN_MS);
      expect(known.settled()).toBe(false);
      expect(await scrapeMetric(gw.adminPort!, HELD)).toBe(1);
      expect((await known.result).status).toBe(403);
    } finally {
      await closeSession(other);
    }
  });

  it('max_held_per_identity: the excess gets its 403 at once while the others wait', async () => {
    const full = 'agent_gateway_access_request_holds_total{outcome="refused_full"}';
    const refusedBefore = (await scrapeMetric(gw.adminPort!, full)) ?? 0;
    const first = timedConnect(session, 'one:443');
    const second = timedConnect(session, 'two:443');
    await heldBecomes(2);
    const third = timedConnect(session, 'three:443');
    const excess = await third.result;
    expect(excess.status).toBe(403);
    expect(excess.headers['agent-gateway-request-id']).toBe(
      accessRequestId(agent.identity, agent.spkiDer, 'three:443'),
    );
    expect(third.ms()).toBeLessThan(MARGIN_MS);
    expect(first.settled()).toBe(false);
    expect(second.settled()).toBe(false);
    expect(await scrapeMetric(gw.adminPort!, full)).toBe(refusedBefore + 1);
    expect((await first.result).status).toBe(403);
    expect((await second.result).status).toBe(403);
    expect(first.ms()).toBeGreaterThanOrEqual(HOLD_MS - 50);
    await heldBecomes(0);
  });

  it('a client that resets its held stream frees the slot at once', async () => {
    const cancelled = 'agent_gateway_access_request_holds_total{outcome="cancelled"}';
    const before = (await scrapeMetric(gw.adminPort!, cancelled)) ?? 0;
    const started = Date.now();
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'one:443' });
    stream.on('error', () => {});
    await heldBecomes(1);
    stream.close(constants.NGHTTP2_CANCEL);
    await heldBecomes(0);
    expect(Date.now() - started).toBeLessThan(HOLD_MS);
    expect(await scrapeMetric(gw.adminPort!, cancelled)).toBe(before + 1);
  });

  it('drain answers a held CONNECT with its 403 at once', async () => {
    const t = timedConnect(session, 'two:443');
    await heldBecomes(1);
    const stopping = gw.stop('SIGTERM');
    const answer = await t.result;
    expect(answer.status).toBe(403);
    expect(answer.headers['agent-gateway-deny-reason']).toBe('no_permission');
    expect(answer.headers['agent-gateway-request-id']).toBe(
      accessRequestId(agent.identity, agent.spkiDer, 'two:443'),
    );
    expect(t.ms()).toBeLessThan(HOLD_MS - MARGIN_MS);
    expect(await stopping).toBe(0);
  });
});
