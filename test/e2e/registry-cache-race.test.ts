// The decision cache against real PostgreSQL NOTIFY: once a revoke has committed and its notification has
// arrived, no authorization that starts afterwards answers allow, with lookups in flight throughout.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import type { RegistryChange } from '../../gateway/registry-changes.js';
import { registryHarness, until } from '../support/registry-harness.js';

const harness = registryHarness();

describe('decision cache race', () => {
  it('after a revoke COMMIT and its notification, no authorize() that starts returns allow', async () => {
    const h = await harness('cache_race');
    await h.signer('org-alice');
    await h.scope('org-alice', 'a.example:443');
    let straddling = 0;
    for (let round = 0; round < 3; round++) {
      const permissionId = `race-${round}`;
      await h.permit(permissionId, 'org-alice', 'agent', 'a.example:443');
      const calls: { start: number; end: number; allow: boolean; cached: boolean }[] = [];
      let stop = false;
      const worker = async () => {
        while (!stop) {
          const start = performance.now();
          const r = await h.authorize('agent', 'a.example');
          calls.push({ start, end: performance.now(), allow: r.allow, cached: r.allow && r.cached });
          // A cache hit resolves without I/O: yield, or this loop starves timers and the LISTEN socket.
          await new Promise((resolve) => setImmediate(resolve));
        }
      };
      const workers = Array.from({ length: 8 }, worker);
      // Scope "touches" (no real change) keep evicting the cached allow, so lookups are constantly in
      // flight against the database when the revoke commits: the generation rule is what is under test.
      const noiseClient = new pg.Client({ connectionString: h.url });
      await noiseClient.connect();
      const noise = (async () => {
        while (!stop) {
          await noiseClient.query(
            "UPDATE principal_key_permissions SET updated_at = now() WHERE signing_key_id = 'org-alice'",
          );
          await sleep(3);
        }
      })();
      await sleep(150);
      const committed = await h.sql(
        'UPDATE permission_registry SET revoked_at = now() WHERE permission_id = $1',
        [permissionId],
      );
      const isRevoke = (c: { change: RegistryChange }) =>
        c.change.permissionId === permissionId && c.change.op === 'UPDATE';
      await until(() => h.changes.some(isRevoke), 1000, 'notification delivered');
      const delivered = h.changes.find(isRevoke)!.at;
      await sleep(150);
      stop = true;
      await Promise.all(workers);
      await noise;
      await noiseClient.end();

      const before = calls.filter((c) => c.end < committed);
      const after = calls.filter((c) => c.start > delivered);
      expect(
        before.some((c) => c.cached),
        'the cache was serving before the revoke',
      ).toBe(true);
      expect(
        before.some((c) => !c.cached && c.allow),
        'lookups reached the database too',
      ).toBe(true);
      straddling += calls.filter((c) => c.start < committed && c.end > delivered && c.allow).length;
      expect(after.length).toBeGreaterThan(10);
      expect(after.filter((c) => c.allow)).toEqual([]);
      expect(delivered - committed).toBeLessThan(1000);
    }
    // Informational: lookups that began before the COMMIT and answered allow after the notification
    // (their tunnels are caught by track()'s staleness check, see live-revocation tests).
    console.info(`cache race: ${straddling} allow(s) straddled a revoke`);
  });
});
