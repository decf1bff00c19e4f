// Fail closed: with the registry database down, CONNECTs are denied (403 registry_unavailable) within the
// query timeout rather than hanging or allowing; when it comes back, the same gateway process allows
// again. Uses its OWN PostgreSQL cluster, since it stops it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, type PgHandle, startPostgres } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  roundTrip,
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const QUERY_TIMEOUT_MS = 500;

describe('registry outage', () => {
  let pgh: PgHandle;
  let gw: GatewayProcess;
  let echo: Upstream;
  let agent: Carrier;

  beforeAll(async () => {
    pgh = await startPostgres();
    const url = await createMigratedDatabase(pgh.url, 'gateway_outage');
    echo = await startEchoServer();
    agent = await createCarrier('agent-alpha');
    await grant(url, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'docstore:443',
    });
    gw = await startGatewayProcess({
      databaseUrl: url,
      config: {
        // Default decision cache on purpose: a cached allow must not outlive the registry connection.
        policy: {
          query_timeout_ms: QUERY_TIMEOUT_MS,
          connect_timeout_ms: 1000,
          pool_acquire_timeout_ms: 1000,
        },
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
      },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    await echo?.close();
    await pgh?.destroy();
  });

  it('denies 403 registry_unavailable while the database is down, and allows again once it is back', async () => {
    const session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    try {
      // Warm: allowed (and, with the listener up, cached).
      const before = await openTunnel(session, 'docstore:443');
      expect(before.status).toBe(200);
      const again = await openTunnel(session, 'docstore:443');
      expect(again.status).toBe(200);
      again.stream.end();
      await closed(again.stream);

      await pgh.stop();
      const t0 = Date.now();
      const during = await openTunnel(session, 'docstore:443');
      const elapsed = Date.now() - t0;
      expect(during.status).toBe(403);
      expect(during.headers['agent-gateway-deny-reason']).toBe('registry_unavailable');
      expect(elapsed).toBeLessThan(QUERY_TIMEOUT_MS + 1000);
      const line = await gw.proc.waitForLog(
        (l) => l.json?.['msg'] === 'CONNECT denied' && l.json?.['deny_reason'] === 'registry_unavailable',
      );
      expect(line.json).toMatchObject({ policy_decision: 'deny', source_identity: 'agent-alpha' });

      // Repeated attempts keep failing closed, each one promptly.
      for (let i = 0; i < 3; i++) {
        const s = Date.now();
        expect((await openTunnel(session, 'docstore:443')).status).toBe(403);
        expect(Date.now() - s).toBeLessThan(QUERY_TIMEOUT_MS + 1000);
      }

      // A tunnel opened before the outage is not cut by it (a registry blip is not a revocation).
      expect((await roundTrip(before.stream, Buffer.from('during outage'))).toString()).toBe('during outage');

      await pgh.start();
      await expect
        .poll(
          async () => {
            const t = await openTunnel(session, 'docstore:443');
            if (t.status === 200) {
              t.stream.end();
              await closed(t.stream);
            }
            return t.status;
          },
          { timeout: 20_000, interval: 250 },
        )
        .toBe(200);
      expect(gw.proc.exitInfo()).toBeNull();
      before.stream.end();
      await closed(before.stream);
    } finally {
      await closeSession(session);
    }
  }, 90_000);
});
