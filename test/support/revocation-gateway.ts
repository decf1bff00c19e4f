// Set-up shared by the revocation-under-attack tests: a gateway with docstore:443 → an echo destination, an
// agent with a grant and a tunnel pumping bytes through it, and a describe block's own database and gateway.
import type { ClientHttp2Session } from 'node:http2';
import { afterAll, beforeAll, expect, inject } from 'vitest';
import { type Carrier, createCarrier, type PrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { closeSession, connectH2, type GatewayProcess, openTunnel, startGatewayProcess } from './gateway.js';
import { Pump } from './pump.js';
import { startEchoServer, type Upstream } from './upstreams.js';

type Toml = Record<string, Record<string, unknown>>;

/** A gateway on `dbUrl` with docstore:443 → the echo server, plus `extra` config sections. */
export function gateway(dbUrl: string, echo: Upstream, extra: Toml = {}): Promise<GatewayProcess> {
  return startGatewayProcess({
    databaseUrl: dbUrl,
    config: {
      ...extra,
      upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
    },
  });
}

/** An agent with a grant for docstore:443 and one tunnel pumping bytes through it. */
export async function grantedTunnel(
  gw: GatewayProcess,
  dbUrl: string,
  principal: PrincipalKey,
  identity: string,
  sessions: ClientHttp2Session[],
): Promise<{ carrier: Carrier; permissionId: string; pump: Pump }> {
  const carrier = await createCarrier(identity);
  const permissionId = await grant(dbUrl, {
    principalId: 'org-alice',
    principal,
    identity,
    subjectSpkiDer: carrier.spkiDer,
    destination: 'docstore:443',
  });
  const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
  sessions.push(session);
  const t = await openTunnel(session, 'docstore:443');
  expect(t.status, String(t.headers['agent-gateway-deny-reason'])).toBe(200);
  const pump = new Pump(t.stream);
  expect(await pump.flowing()).toBe(true);
  return { carrier, permissionId, pump };
}

/** A migrated database on the shared cluster, an echo destination and a gateway, for one describe block. */
export function gatewaySuite(dbName: string, extra: Toml = {}) {
  const adminUrl = inject('pgAdminUrl');
  const ctx = { dbUrl: '', gw: undefined as unknown as GatewayProcess, sessions: [] as ClientHttp2Session[] };
  let echo: Upstream | undefined;
  beforeAll(async () => {
    ctx.dbUrl = await createMigratedDatabase(adminUrl, dbName);
    echo = await startEchoServer();
    ctx.gw = await gateway(ctx.dbUrl, echo, extra);
  });
  afterAll(async () => {
    for (const s of ctx.sessions) await closeSession(s);
    await ctx.gw?.cleanup();
    await echo?.close();
    if (ctx.dbUrl) await dropDatabase(adminUrl, ctx.dbUrl);
  });
  return ctx;
}
