// Several gateways on one registry (issue #18, docs/contract.md "Replicas"): three gateway processes on the
// same PostgreSQL primary (with its streaming replica for lookups), a live tunnel of one agent through each;
// one revoke on the primary ends all three within a second, because each gateway hears the primary's
// NOTIFY on its own LISTEN connection, not the replica.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { revokePermission } from '../../dev-support/registry-seed.js';
import { DESTINATION, type Fleet, lookups, startFleet } from '../support/fleet.js';
import { closed, type GatewayProcess, openTunnel } from '../support/gateway.js';

describe('fleet: three gateways, one revoke', () => {
  let fleet: Fleet;
  let gateways: GatewayProcess[];

  beforeAll(async () => {
    fleet = await startFleet('fleet_revoke_three');
    gateways = [];
    for (let i = 0; i < 3; i++) gateways.push(await fleet.gateway());
  });

  afterAll(async () => {
    await fleet?.close();
  });

  it('reaches the live tunnel on every gateway within 1 s, and each refuses the agent after', async () => {
    const { carrier, permissionId } = await fleet.grantedAgent('agent-three-gateways');
    const sessions = await Promise.all(gateways.map((gw) => fleet.session(gw, carrier)));
    const pumps = [];
    for (const s of sessions) pumps.push(await fleet.tunnel(s));
    // Every gateway answered its CONNECT from the replica: the revoke below is not carried by it.
    for (const gw of gateways) expect(await lookups(gw, 'replica')).toBeGreaterThan(0);
    for (const p of pumps) expect(await p.flowing(100)).toBe(true);

    await revokePermission(fleet.dbUrl, permissionId);
    const committed = Date.now();
    await Promise.all(pumps.map((p) => closed(p.stream, 3000)));
    const took = pumps.map((p) => p.closedAt! - committed);
    for (const [i, ms] of took.entries())
      expect(ms, `gateway ${i + 1}: tunnel ended ${ms} ms after the COMMIT`).toBeLessThan(1000);
    for (const gw of gateways) {
      const lines = await gw.waitForLogs('tunnel closed', (l) => l['source_identity'] === carrier.identity);
      expect(lines[0]).toMatchObject({ end_reason: 'revoked', permission_id: permissionId });
    }
    for (const s of sessions) expect((await openTunnel(s, DESTINATION)).status).toBe(403);
  });
});
