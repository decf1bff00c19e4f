// Replica reads with primary truth (issue #18 item 1, docs/contract.md "Replicas"), on a real PostgreSQL
// primary and a streaming replica of it: a caught-up replica answers the CONNECT lookups; a replica whose
// replay is paused never answers for a grant revoked on the primary since (403, from the primary).
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { revokePermission } from '../../dev-support/registry-seed.js';
import { DESTINATION, type Fleet, lookups, readyz, startFleet } from '../support/fleet.js';
import {
  closed,
  type GatewayProcess,
  openTunnel,
  scrapeMetric,
  startGatewayProcess,
} from '../support/gateway.js';

/** Is the permission still unrevoked on the replica (what a gateway trusting it would allow)? */
async function activeOnReplica(fleet: Fleet, permissionId: string): Promise<boolean> {
  const c = new pg.Client({ connectionString: fleet.replicaDbUrl });
  await c.connect();
  try {
    const r = await c.query(
      'SELECT revoked_at IS NULL AS active FROM permission_registry WHERE permission_id = $1',
      [permissionId],
    );
    return r.rows[0]?.active === true;
  } finally {
    await c.end();
  }
}

describe('fleet: CONNECT lookups on a streaming replica', () => {
  let fleet: Fleet;
  let gw: GatewayProcess;

  beforeAll(async () => {
    fleet = await startFleet('fleet_replica_reads');
    gw = await fleet.gateway();
  });

  afterAll(async () => {
    await fleet?.replica.resumeReplay().catch(() => {});
    await fleet?.close();
  });

  it('a caught-up replica answers the lookups; /readyz is ready, not degraded', async () => {
    const { carrier } = await fleet.grantedAgent('agent-replica-reads');
    const session = await fleet.session(gw, carrier);
    const before = { replica: await lookups(gw, 'replica'), fallback: await lookups(gw, 'primary_fallback') };
    for (let i = 0; i < 5; i++) {
      const pump = await fleet.tunnel(session);
      pump.stop();
      await closed(pump.stream);
    }
    expect((await lookups(gw, 'replica')) - before.replica).toBe(5);
    expect((await lookups(gw, 'primary_fallback')) - before.fallback).toBe(0);
    expect(await scrapeMetric(gw.adminPort!, 'agent_gateway_degraded')).toBe(0);
    const ready = await readyz(gw);
    expect(ready.status).toBe(200);
    expect(ready.body['status']).toBe('ready');
    expect(ready.body['degraded']).toBeUndefined();
  });

  it('replay paused, a revoke on the primary: the CONNECT is 403 from the primary, never 200 from the replica', async () => {
    const { carrier, permissionId } = await fleet.grantedAgent('agent-paused-replica');
    const session = await fleet.session(gw, carrier);
    // A live tunnel on the grant: its end shows the gateway has heard of the revoke (the re-check is the
    // primary's), so the CONNECT below comes after the notification, as the rule requires.
    const live = await fleet.tunnel(session);
    await fleet.replica.pauseReplay();
    await revokePermission(fleet.dbUrl, permissionId);
    await closed(live.stream, 2000);

    // The replica still has the grant: a gateway that trusted it would say 200.
    expect(await activeOnReplica(fleet, permissionId)).toBe(true);
    const fallbackBefore = await lookups(gw, 'primary_fallback');
    const replicaBefore = await lookups(gw, 'replica');
    for (let i = 0; i < 3; i++) {
      const t = await openTunnel(session, DESTINATION);
      expect(t.status).toBe(403);
      expect(t.headers['agent-gateway-deny-reason']).toBe('no_permission');
    }
    expect((await lookups(gw, 'primary_fallback')) - fallbackBefore).toBe(3);
    expect((await lookups(gw, 'replica')) - replicaBefore).toBe(0);

    // Replay resumed, the replica has the revoke and answers again: the same 403, now from the replica.
    await fleet.replica.resumeReplay();
    await fleet.replica.caughtUp(fleet.primary.url);
    expect(await activeOnReplica(fleet, permissionId)).toBe(false);
    const t = await openTunnel(session, DESTINATION);
    expect(t.status).toBe(403);
    expect((await lookups(gw, 'replica')) - replicaBefore).toBe(1);
  });

  it('a replica that stops answering is set aside: lookups go to the primary, then back once it returns', async () => {
    const { carrier } = await fleet.grantedAgent('agent-replica-down');
    const session = await fleet.session(gw, carrier);
    await fleet.replica.stop();
    try {
      const fallbackBefore = await lookups(gw, 'primary_fallback');
      const primaryBefore = await lookups(gw, 'primary');
      for (let i = 0; i < 3; i++) {
        const t = await openTunnel(session, DESTINATION);
        expect(t.status).toBe(200);
        t.stream.close();
      }
      // The first lookup found the replica gone (primary_fallback); later ones within its backoff (at
      // least 400 ms) do not ask it (primary), but on a slow machine the backoff may end between them.
      // Every lookup was answered by the primary, and none by the replica.
      const fallback = (await lookups(gw, 'primary_fallback')) - fallbackBefore;
      const primary = (await lookups(gw, 'primary')) - primaryBefore;
      expect(fallback).toBeGreaterThanOrEqual(1);
      expect(fallback + primary).toBe(3);
      expect(gw.logs('registry replica unusable: lookups go to the primary').length).toBeGreaterThan(0);
    } finally {
      await fleet.replica.start();
    }
    await fleet.replica.caughtUp(fleet.primary.url);
    const replicaBefore = await lookups(gw, 'replica');
    await expect
      .poll(
        async () => {
          const pump = await fleet.tunnel(session);
          pump.stop();
          await closed(pump.stream);
          return (await lookups(gw, 'replica')) - replicaBefore;
        },
        { timeout: 45_000, interval: 500 },
      )
      .toBeGreaterThan(0);
  });

  it('a replica URL that names a primary stops startup (exit 1) naming the key', async () => {
    const wrong = await startGatewayProcess({
      databaseUrl: fleet.dbUrl,
      config: { policy: { replica_database_url: [fleet.replicaDbUrl, fleet.dbUrl] } },
      waitReady: false,
    });
    try {
      const exit = await wrong.proc.exited;
      expect(exit.code).toBe(1);
      expect(wrong.proc.lines.map((l) => l.text).join('\n')).toMatch(
        /policy\.replica_database_url\[1\] \(replica_2;.*is not a standby/,
      );
    } finally {
      await wrong.cleanup();
    }
  });
});
