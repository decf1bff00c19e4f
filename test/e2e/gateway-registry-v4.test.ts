// A registry written for the original system (schema versions 1..4, without migrations/0005) keeps
// working with this gateway at default settings: it starts, allows a granted CONNECT, and a revocation
// still ends the open tunnel through the version-4 NOTIFY triggers. Real gateway process, real PostgreSQL.
import type { ClientHttp2Session } from 'node:http2';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createDatabaseAtVersion, dropDatabase } from '../../dev-support/postgres.js';
import { grant, revokePermission } from '../../dev-support/registry-seed.js';
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

describe('a version-4 registry', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let echo: Upstream;
  let agent: Carrier;
  let session: ClientHttp2Session | undefined;

  beforeAll(async () => {
    dbUrl = await createDatabaseAtVersion(adminUrl, 'gateway_registry_v4', 4);
    echo = await startEchoServer();
    agent = await createCarrier('agent-alpha');
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: { upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } } },
    });
  });

  afterAll(async () => {
    if (session !== undefined) await closeSession(session);
    await gw?.cleanup();
    await echo?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('is served with default settings, and a revocation still ends the open tunnel', async () => {
    const c = new pg.Client({ connectionString: dbUrl });
    await c.connect();
    try {
      const v = await c.query<{ v: number }>(
        'SELECT max(version)::int AS v FROM agent_gateway_schema_version',
      );
      expect(v.rows[0]!.v).toBe(4);
    } finally {
      await c.end();
    }
    const permissionId = await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'docstore:443',
    });
    session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    const t = await openTunnel(session, 'docstore:443');
    expect(t.status).toBe(200);
    const pump = new Pump(t.stream);
    expect(await pump.flowing()).toBe(true);

    await revokePermission(dbUrl, permissionId);
    await closed(t.stream, 5000);
    const ended = await gw.waitForLogs('tunnel closed', (l) => l['end_reason'] === 'revoked');
    expect(ended).toHaveLength(1);
    const denied = await openTunnel(session, 'docstore:443');
    expect(denied.status).toBe(403);
    // The gateway's candidate query skips revoked rows: nothing grants the triple any more.
    expect(denied.headers['agent-gateway-deny-reason']).toBe('no_permission');
  });
});
