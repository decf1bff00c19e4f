// Live revocation against real PostgreSQL NOTIFY: a committed revoke reaches open tunnels within a second,
// and the registry pool survives its connections being cut. Tunnels are stand-ins implementing LiveTunnel;
// the gateway-level version (real bytes through a real tunnel) is live-revocation.test.ts, and the decision
// cache race is registry-cache-race.test.ts.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { registryHarness, until } from '../support/registry-harness.js';
import { DAY, nowTruncated } from '../unit/fixtures/signed-rows.js';

const harness = registryHarness();

describe('live revocation (PostgreSQL LISTEN/NOTIFY)', () => {
  it('revoking a permission ends its tunnel within 1 s of the COMMIT; other tunnels keep running', async () => {
    const h = await harness('rev_permission');
    await h.signer('org-alice');
    await h.scope('org-alice', 'api.example.com:443');
    await h.permit('perm-a', 'org-alice', 'agent-a', 'api.example.com:443');
    await h.permit('perm-b', 'org-alice', 'agent-b', 'api.example.com:443');
    const a = await h.tunnel('agent-a', 'api.example.com');
    const b = await h.tunnel('agent-b', 'api.example.com');
    expect(h.revocation.state()).toMatchObject({ mode: 'listening', openTunnels: 2 });

    const committed = await h.sql(
      "UPDATE permission_registry SET revoked_at = now() WHERE permission_id = 'perm-a'",
    );
    await until(() => a.revoked !== undefined, 1000, 'revoke within 1 s');
    expect(a.revoked!.at - committed).toBeLessThan(1000);
    expect(a.revoked?.reason).toBe('no_permission');
    await sleep(100);
    expect(b.revoked).toBeUndefined();
    expect(h.revocation.state().openTunnels).toBe(1);
    expect(await h.authorize('agent-a', 'api.example.com')).toMatchObject({
      allow: false,
      reason: 'no_permission',
    });
  });

  it('revoking a signer ends every tunnel it signed for, and only those', async () => {
    const h = await harness('rev_signer');
    await h.signer('org-alice');
    await h.signer('org-bob');
    for (const s of ['org-alice', 'org-bob']) {
      await h.scope(s, 'a.example:443');
      await h.scope(s, 'b.example:443');
    }
    await h.permit('p1', 'org-alice', 'agent-1', 'a.example:443');
    await h.permit('p2', 'org-alice', 'agent-2', 'b.example:443');
    await h.permit('p3', 'org-bob', 'agent-3', 'a.example:443');
    const t1 = await h.tunnel('agent-1', 'a.example');
    const t1b = await h.tunnel('agent-1', 'a.example', 'second tunnel, same grant');
    const t2 = await h.tunnel('agent-2', 'b.example');
    const t3 = await h.tunnel('agent-3', 'a.example');
    const committed = await h.sql(
      "UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = 'org-alice'",
    );
    await until(() => [t1, t1b, t2].every((t) => t.revoked !== undefined), 1000, 'signer tunnels revoked');
    expect(Math.max(t1.revoked!.at, t1b.revoked!.at, t2.revoked!.at) - committed).toBeLessThan(1000);
    await sleep(100);
    expect(t3.revoked).toBeUndefined();
  });

  it('narrowing a scope window ends the tunnels it no longer covers', async () => {
    const h = await harness('rev_scope');
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.scope('org-alice', 'b.example:443');
    await h.permit('pa', 'org-alice', 'agent', 'a.example:443');
    await h.permit('pb', 'org-alice', 'agent', 'b.example:443');
    const ta = await h.tunnel('agent', 'a.example');
    const tb = await h.tunnel('agent', 'b.example');
    await h.sql(
      `UPDATE principal_key_permissions SET not_after = now() + interval '1 day'
       WHERE signing_key_id = 'org-alice' AND destination = 'a.example:443'`,
    );
    await until(() => ta.revoked !== undefined, 1000, 'scope narrowing');
    expect(ta.revoked?.reason).toBe('scope_window_too_narrow');
    await sleep(100);
    expect(tb.revoked).toBeUndefined();
  });

  it('ends a tunnel when its grant expires (earliest of permission, signer, scope)', async () => {
    const h = await harness('rev_expiry');
    const now = nowTruncated();
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.permit('p-short', 'org-alice', 'agent-short', 'a.example:443', now + 1_500_000n);
    await h.permit('p-long', 'org-alice', 'agent-long', 'a.example:443');
    const short = await h.tunnel('agent-short', 'a.example');
    const long = await h.tunnel('agent-long', 'a.example');
    expect(short.grant.validUntil).toBe(now + 1_500_000n);
    const started = performance.now();
    await until(() => short.revoked !== undefined, 3000, 'expiry');
    expect(short.revoked?.reason).toBe('expired');
    // Timer fires at validUntil (computed from the wall clock just before `started`), not early.
    expect(short.revoked!.at - started).toBeGreaterThan(1000);
    expect(long.revoked).toBeUndefined();
  });

  it('with the LISTEN backend terminated, a revoke is still applied within the fallback interval', async () => {
    // Reconnection is held off so only polling can find the revoke.
    const h = await harness('rev_terminated', { recheckIntervalMs: 300, reconnectInitialMs: 30_000 });
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.permit('p1', 'org-alice', 'agent', 'a.example:443');
    const t = await h.tunnel('agent', 'a.example');
    await h.sql(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE application_name = 'agent_gateway_listen' AND datname = current_database()`,
    );
    await until(() => !h.revocation.state().listenerUp, 2000, 'listener down');
    expect(h.revocation.state().mode).toBe('polling');
    expect(h.authorizer.cacheStats()).toEqual({ entries: 0, enabled: false });
    const committed = await h.sql(
      "UPDATE permission_registry SET revoked_at = now() WHERE permission_id = 'p1'",
    );
    await until(() => t.revoked !== undefined, 1500, 'revoke by polling');
    expect(t.revoked!.at - committed).toBeLessThan(300 + 500);
  });

  it('after the LISTEN backend is terminated it reconnects, re-checks everything, and listens again', async () => {
    const h = await harness('rev_reconnect', { recheckIntervalMs: 60_000 });
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.permit('p1', 'org-alice', 'agent-1', 'a.example:443');
    await h.permit('p2', 'org-alice', 'agent-2', 'a.example:443');
    const t1 = await h.tunnel('agent-1', 'a.example');
    const t2 = await h.tunnel('agent-2', 'a.example');
    // Revoke p1 while the listener is being killed: its notification is lost with the session.
    await h.sql(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE application_name = 'agent_gateway_listen' AND datname = current_database()`,
    );
    await h.sql("UPDATE permission_registry SET revoked_at = now() WHERE permission_id = 'p1'");
    // The reconnect's full re-check finds it (polling is 60 s here, so it is not polling).
    await until(() => t1.revoked !== undefined, 3000, 're-check on reconnect');
    await until(() => h.revocation.state().mode === 'listening', 3000, 'listening again');
    const committed = await h.sql(
      "UPDATE permission_registry SET revoked_at = now() WHERE permission_id = 'p2'",
    );
    await until(() => t2.revoked !== undefined, 1000, 'notification after reconnect');
    expect(t2.revoked!.at - committed).toBeLessThan(1000);
  });

  it('a re-grant after a revoke is allowed again', async () => {
    const h = await harness('rev_regrant');
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.permit('p1', 'org-alice', 'agent', 'a.example:443');
    const t = await h.tunnel('agent', 'a.example');
    await h.sql("UPDATE permission_registry SET revoked_at = now() WHERE permission_id = 'p1'");
    await until(() => t.revoked !== undefined, 1000, 'revoked');
    expect((await h.authorize('agent', 'a.example')).allow).toBe(false);
    await h.permit('p2', 'org-alice', 'agent', 'a.example:443');
    const again = await h.authorize('agent', 'a.example');
    expect(again).toMatchObject({ allow: true, grant: { permissionId: 'p2' } });
  });

  it('a revoke with a renewal in place keeps the tunnel, now under the new row', async () => {
    const h = await harness('rev_renewal');
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.permit('p-old', 'org-alice', 'agent', 'a.example:443');
    const t = await h.tunnel('agent', 'a.example');
    await h.permit('p-new', 'org-alice', 'agent', 'a.example:443', nowTruncated() + 14n * DAY);
    await h.sql("UPDATE permission_registry SET revoked_at = now() WHERE permission_id = 'p-old'");
    await until(() => t.grant.permissionId === 'p-new', 1000, 'regrant');
    expect(t.revoked).toBeUndefined();
  });

  it('a bulk revoke of 1000 rows is one batch, not 1000 queries per tunnel', async () => {
    const h = await harness('rev_bulk');
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.writer.query('BEGIN');
    for (let i = 0; i < 1000; i++)
      await h.permit(`bulk-${i}`, 'org-alice', `agent-${i % 10}`, 'a.example:443');
    await h.writer.query('COMMIT');
    const tunnels = await Promise.all(
      Array.from({ length: 10 }, (_, i) => h.tunnel(`agent-${i}`, 'a.example')),
    );
    await sleep(200); // let the INSERT notifications settle
    const queries = async () =>
      (await h.metrics.registryQuerySeconds.get()).values.find(
        (v) =>
          v.metricName === 'agent_gateway_registry_query_seconds_count' &&
          v.labels['query'] === 'active_candidates',
      )?.value ?? 0;
    const before = await queries();
    await h.sql("UPDATE permission_registry SET revoked_at = now() WHERE permission_id LIKE 'bulk-%'");
    await until(() => tunnels.every((t) => t.revoked !== undefined), 2000, 'bulk revoke');
    // One query per distinct (identity, key, destination): 10, maybe a few more if the batch split.
    expect((await queries()) - before).toBeLessThanOrEqual(30);
  });
});

describe('pool resilience', () => {
  it('survives its idle connections being terminated (no crash, next query works)', async () => {
    const h = await harness('pool_terminate');
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    await h.permit('p1', 'org-alice', 'agent', 'a.example:443');
    await Promise.all(Array.from({ length: 5 }, () => h.registry.ping()));
    await h.sql(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE application_name = 'agent_gateway' AND datname = current_database()`,
    );
    await sleep(100);
    h.authorizer.setListenerUp(false); // bypass the cache: this must reach the database
    expect((await h.authorize('agent', 'a.example')).allow).toBe(true);
  });
});
