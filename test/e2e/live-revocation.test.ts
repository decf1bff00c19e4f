// Live revocation through the real gateway process: tunnels moving bytes are reset within a second of a
// revoking COMMIT, only the tunnels that row authorized, and a re-grant lets the agent back in.
import { request } from 'node:http';
import type { ClientHttp2Session } from 'node:http2';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey, type PrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant, revokePermission, seedPermission, windowFromNow } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  startGatewayProcess,
} from '../support/gateway.js';
import { Pump } from '../support/pump.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('live revocation through the gateway', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let echo: Upstream;
  let alice: PrincipalKey;
  let bob: PrincipalKey;
  let alpha: Carrier;
  let beta: Carrier;
  let gamma: Carrier;
  const sessions: ClientHttp2Session[] = [];
  const session = async (carrier: Carrier) => {
    const s = await connectH2(gw.port, { ca: gw.caPem, carrier });
    sessions.push(s);
    return s;
  };
  const pump = async (s: ClientHttp2Session, authority = 'docstore:443') => {
    const t = await openTunnel(s, authority);
    expect(t.status).toBe(200);
    const p = new Pump(t.stream);
    expect(await p.flowing()).toBe(true);
    return p;
  };
  const sql = async (text: string, values: unknown[] = []) => {
    const c = new pg.Client({ connectionString: dbUrl });
    await c.connect();
    try {
      await c.query(text, values);
    } finally {
      await c.end();
    }
    return Date.now();
  };

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'live_revocation');
    echo = await startEchoServer();
    [alpha, beta, gamma] = await Promise.all([
      createCarrier('agent-alpha'),
      createCarrier('agent-beta'),
      createCarrier('agent-gamma'),
    ]);
    alice = createPrincipalKey();
    bob = createPrincipalKey();
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        policy: { revocation_recheck_interval_ms: 500 },
        upstream: {
          overrides: { 'docstore:443': `127.0.0.1:${echo.port}`, 'expiring:443': `127.0.0.1:${echo.port}` },
        },
      },
    });
  });

  afterAll(async () => {
    for (const s of sessions) await closeSession(s);
    await gw?.cleanup();
    await echo?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('resets the revoked tunnel within 1 s while another identity keeps flowing; re-grant lets it back', async () => {
    const permAlpha = await grant(dbUrl, {
      principalId: 'org-alice',
      principal: alice,
      identity: alpha.identity,
      subjectSpkiDer: alpha.spkiDer,
      destination: 'docstore:443',
    });
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: alice,
      identity: beta.identity,
      subjectSpkiDer: beta.spkiDer,
      destination: 'docstore:443',
    });
    const sa = await session(alpha);
    const sb = await session(beta);
    const a1 = await pump(sa);
    const a2 = await pump(sa);
    const b = await pump(sb);

    const before = Date.now();
    await revokePermission(dbUrl, permAlpha);
    const committed = Date.now();
    await closed(a1.stream, 2000);
    await closed(a2.stream, 2000);
    expect(a1.closedAt! - committed).toBeLessThan(1000);
    expect(a2.closedAt! - before).toBeLessThan(1000 + (committed - before));
    expect(a1.rstCode).not.toBe(0);

    // The other identity's tunnel never noticed.
    expect(await b.flowing()).toBe(true);
    expect(b.closedAt).toBeUndefined();

    await expect
      .poll(() => gw.logs('tunnel closed').filter((l) => l['source_identity'] === 'agent-alpha').length)
      .toBe(2);
    const lines = gw.logs('tunnel closed').filter((l) => l['source_identity'] === 'agent-alpha');
    for (const l of lines) {
      expect(l).toMatchObject({ end_reason: 'revoked', permission_id: permAlpha });
      expect(String(l['end_detail'])).toMatch(/no_permission/);
      expect(l['tunnel_id']).toEqual(expect.any(String));
    }

    // New CONNECTs are refused, and the same session still works for other things.
    expect((await openTunnel(sa, 'docstore:443')).status).toBe(403);
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: alice,
      identity: alpha.identity,
      subjectSpkiDer: alpha.spkiDer,
      destination: 'docstore:443',
    });
    const again = await pump(sa);
    again.stop();
    await closed(again.stream);
    b.stop();
    await closed(b.stream);
  });

  it('revoking a signer resets all of its tunnels and none of another signer', async () => {
    await grant(dbUrl, {
      principalId: 'org-bob',
      principal: bob,
      identity: gamma.identity,
      subjectSpkiDer: gamma.spkiDer,
      destination: 'docstore:443',
    });
    const sa = await session(alpha);
    const sb = await session(beta);
    const sg = await session(gamma);
    const [pa, pb, pg_] = [await pump(sa), await pump(sb), await pump(sg)];
    const committed = await sql(
      "UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = 'org-alice'",
    );
    await closed(pa.stream, 2000);
    await closed(pb.stream, 2000);
    expect(Math.max(pa.closedAt!, pb.closedAt!) - committed).toBeLessThan(1000);
    expect(await pg_.flowing()).toBe(true);
    pg_.stop();
    await closed(pg_.stream);

    const metrics = await httpGet(gw.adminPort!, '/metrics');
    expect(metrics.body).toMatch(
      /agent_gateway_revocations_total\{reason="(no_permission|signer_revoked)"\} [1-9]/,
    );
    expect(metrics.body).toMatch(/agent_gateway_registry_listener_up 1/);
    const ready = await httpGet(gw.adminPort!, '/readyz');
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.body)).toMatchObject({ status: 'ready', revocation: { mode: 'listening' } });
  });

  it('ends a tunnel when its grant expires', async () => {
    const w = windowFromNow(-1, 0);
    const notAfter = BigInt(Date.now() + 2500) * 1000n;
    await seedPermission(dbUrl, {
      permissionId: 'perm-expiring',
      principalId: 'org-bob',
      principal: bob,
      identity: gamma.identity,
      subjectSpkiDer: gamma.spkiDer,
      destination: 'docstore:443',
      window: { notBefore: w.notBefore, notAfter },
    });
    // Revoke gamma's long grant so the expiring row is the only one.
    await sql(
      "UPDATE permission_registry SET revoked_at = now() WHERE subject_identity = 'agent-gamma' AND permission_id <> 'perm-expiring'",
    );
    await sleep(100);
    const sg = await session(gamma);
    const p = await pump(sg);
    await closed(p.stream, 5000);
    const expectedEnd = Number(notAfter / 1000n);
    expect(p.closedAt!).toBeGreaterThanOrEqual(expectedEnd - 50);
    expect(p.closedAt! - expectedEnd).toBeLessThan(1000);
    const line = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'tunnel closed' && l.json?.['permission_id'] === 'perm-expiring',
      2000,
    );
    expect(line.json).toMatchObject({ end_reason: 'expired' });
  });
});
