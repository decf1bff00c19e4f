// Primary loss (issue #18 item 2, docs/contract.md "Replicas"): with the PostgreSQL primary stopped, an
// agent granted before keeps connecting through the streaming replica and /readyz is 200 "degraded" with the
// reason; when the primary is back the change listener resubscribes, /readyz is ready again, and a revoke
// reaches a tunnel opened during the outage within a second.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { revokePermission } from '../../dev-support/registry-seed.js';
import { DESTINATION, type Fleet, lookups, readyz, startFleet } from '../support/fleet.js';
import { closed, type GatewayProcess, openTunnel, scrapeMetric } from '../support/gateway.js';

describe('fleet: the registry primary lost and back', () => {
  let fleet: Fleet;
  let gw: GatewayProcess;

  beforeAll(async () => {
    fleet = await startFleet('fleet_primary_loss');
    gw = await fleet.gateway();
  });

  afterAll(async () => {
    await fleet?.primary.start().catch(() => {});
    await fleet?.close();
  });

  it('lookups continue on the replica while the primary is down; it resubscribes when the primary returns', async () => {
    const { carrier, permissionId } = await fleet.grantedAgent('agent-primary-loss');
    const session = await fleet.session(gw, carrier);
    const before = await fleet.tunnel(session);
    expect(await scrapeMetric(gw.adminPort!, 'agent_gateway_registry_listener_up')).toBe(1);

    await fleet.primary.stop();
    await expect.poll(() => scrapeMetric(gw.adminPort!, 'agent_gateway_registry_listener_up')).toBe(0);

    // New CONNECTs of the granted agent: answered by the replica.
    const replicaBefore = await lookups(gw, 'replica');
    const during = [];
    for (let i = 0; i < 3; i++) during.push(await fleet.tunnel(session));
    expect((await lookups(gw, 'replica')) - replicaBefore).toBe(3);
    expect(await scrapeMetric(gw.adminPort!, 'agent_gateway_degraded')).toBe(1);
    expect(
      gw.logs(
        'registry primary unreachable and the change listener down: lookups answered by replicas (degraded)',
      ),
    ).toHaveLength(1);
    // Still ready for the balancer, saying why it is degraded.
    const ready = await readyz(gw);
    expect(ready.status).toBe(200);
    expect(ready.body['status']).toBe('degraded');
    expect(String(ready.body['degraded'])).toMatch(/registry primary unreachable/);
    // The tunnel opened before the loss keeps flowing (its re-checks fail within the grace period).
    expect(await before.flowing()).toBe(true);

    // The primary returns: the listener resubscribes (a second "listener up"), the state clears.
    const ups = gw.logs('registry change listener up').length;
    await fleet.primary.start();
    await expect
      .poll(() => scrapeMetric(gw.adminPort!, 'agent_gateway_registry_listener_up'), { timeout: 15_000 })
      .toBe(1);
    await expect.poll(() => gw.logs('registry change listener up').length).toBe(ups + 1);
    expect(await scrapeMetric(gw.adminPort!, 'agent_gateway_degraded')).toBe(0);
    const back = await readyz(gw);
    expect(back.status).toBe(200);
    expect(back.body['status']).toBe('ready');

    // A revoke on the primary now reaches every live tunnel, including those opened through the replica.
    await revokePermission(fleet.dbUrl, permissionId);
    const committed = Date.now();
    for (const pump of [before, ...during]) {
      await closed(pump.stream, 3000);
      expect(pump.closedAt! - committed).toBeLessThan(1000);
    }
    // And a new CONNECT is refused (the replica answers once it has replayed the revoke, else the primary).
    expect((await openTunnel(session, DESTINATION)).status).toBe(403);
  });

  it('with the primary down and no replica answering, /readyz is 503 and a CONNECT is refused (registry_unavailable)', async () => {
    const { carrier } = await fleet.grantedAgent('agent-nothing-left');
    const session = await fleet.session(gw, carrier);
    await fleet.primary.stop();
    await fleet.replica.stop();
    try {
      await expect.poll(() => scrapeMetric(gw.adminPort!, 'agent_gateway_registry_listener_up')).toBe(0);
      const t = await openTunnel(session, DESTINATION);
      expect(t.status).toBe(403);
      expect(t.headers['agent-gateway-deny-reason']).toBe('registry_unavailable');
      const ready = await readyz(gw);
      expect(ready.status).toBe(503);
      expect(ready.body['status']).toBe('not_ready');
    } finally {
      await fleet.primary.start();
      await fleet.replica.start();
    }
  });
});
