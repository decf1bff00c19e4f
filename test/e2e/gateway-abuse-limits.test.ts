// Abuse resistance (issue #7), the limits: a real gateway process with tight limits, a real (own)
// PostgreSQL, loopback only. Each case checks what the gateway does to the abusive client AND that an
// unrelated well-behaved client on another connection (another identity) still moves 4 MiB through an echo
// tunnel, sha256-checked, during or right after the abuse. Every loop is bounded; assertions are on
// behaviour, not on timing. Protocol floods, slow peers and readiness are in gateway-abuse-floods.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Carrier } from '../../dev-support/pki.js';
import type { PgHandle } from '../../dev-support/postgres.js';
import { goodTransfer } from '../support/abuse-clients.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  scrapeMetric,
  startGatewayProcess,
  type TunnelResult,
} from '../support/gateway.js';
import { startOwnRegistry } from '../support/own-registry.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('gateway abuse resistance (issue #7)', () => {
  let pg: PgHandle;
  let echo: Upstream;
  /** Tight limits: rate 5/s burst 5, 2 tunnels per identity, 4 in total. */
  let gwLimits: GatewayProcess;
  let good: Carrier;
  let burst: Carrier;
  let hog: Carrier;
  let hog2: Carrier;

  const counter = async (g: GatewayProcess, series: string) =>
    (await scrapeMetric(g.adminPort!, `agent_gateway_${series}`)) ?? 0;

  beforeAll(async () => {
    const registry = await startOwnRegistry({
      dbName: 'gateway_abuse_limits',
      principalId: 'org-abuse',
      identities: ['agent-good', 'agent-burst', 'agent-hog', 'agent-hog2'],
      destinations: ['echo.test:443'],
    });
    pg = registry.pg;
    [good, burst, hog, hog2] = registry.carriers as [Carrier, Carrier, Carrier, Carrier];
    echo = await startEchoServer();
    gwLimits = await startGatewayProcess({
      databaseUrl: registry.dbUrl,
      config: {
        upstream: { overrides: { 'echo.test:443': `127.0.0.1:${echo.port}` } },
        limits: {
          connect_rate_per_identity: 5,
          connect_burst_per_identity: 5,
          max_tunnels_per_identity: 2,
          max_tunnels: 4,
        },
      },
    });
  });

  afterAll(async () => {
    await gwLimits?.cleanup();
    await echo?.close();
    await pg?.destroy();
  });

  describe('limits', () => {
    it('rate-limits a CONNECT burst with 429 rate_limited (header, log line, metric)', async () => {
      const before = await counter(gwLimits, 'limit_rejections_total{reason="rate_limited"}');
      const s = await connectH2(gwLimits.port, { ca: gwLimits.caPem, carrier: burst });
      let tunnels: TunnelResult[] = [];
      try {
        const burstDone = Promise.all(Array.from({ length: 20 }, () => openTunnel(s, 'echo.test:443')));
        const [res] = await Promise.all([burstDone, goodTransfer(gwLimits, good)]);
        tunnels = res;
        const reasons = tunnels.map((t) =>
          t.status === 200 ? 'ok' : String(t.headers['agent-gateway-deny-reason']),
        );
        for (const t of tunnels) expect([200, 429]).toContain(t.status);
        // Burst 5 (of which at most 2 become tunnels: max_tunnels_per_identity), the rest refused.
        expect(reasons.filter((r) => r === 'rate_limited').length).toBeGreaterThanOrEqual(10);
        expect(reasons.filter((r) => r === 'ok').length).toBeLessThanOrEqual(2);
      } finally {
        for (const t of tunnels) t.stream.close();
        await closeSession(s);
      }
      const line = await gwLimits.proc.waitForLog(
        (l) => l.json?.['msg'] === 'CONNECT denied' && l.json?.['deny_reason'] === 'rate_limited',
      );
      expect(line.json).toMatchObject({ source_identity: 'agent-burst', policy_decision: 'deny' });
      expect(await counter(gwLimits, 'limit_rejections_total{reason="rate_limited"}')).toBeGreaterThanOrEqual(
        before + 10,
      );
      await goodTransfer(gwLimits, good);
    });

    it('refuses a third concurrent tunnel of one identity (429 identity_tunnel_limit), then the whole gateway at max_tunnels (503 tunnel_limit)', async () => {
      // Let the earlier burst's tunnels close and the identity's bucket refill.
      await expect.poll(() => counter(gwLimits, 'tunnels_open'), { timeout: 10_000 }).toBe(0);
      await sleep(1200);
      const identityBefore = await counter(
        gwLimits,
        'limit_rejections_total{reason="identity_tunnel_limit"}',
      );
      const totalBefore = await counter(gwLimits, 'limit_rejections_total{reason="tunnel_limit"}');
      const a = await connectH2(gwLimits.port, { ca: gwLimits.caPem, carrier: hog });
      const b = await connectH2(gwLimits.port, { ca: gwLimits.caPem, carrier: hog2 });
      const held: TunnelResult[] = [];
      try {
        for (let i = 0; i < 2; i++) held.push(await openTunnel(a, 'echo.test:443'));
        expect(held.map((t) => t.status)).toEqual([200, 200]);
        const third = await openTunnel(a, 'echo.test:443');
        expect(third.status).toBe(429);
        expect(third.headers['agent-gateway-deny-reason']).toBe('identity_tunnel_limit');
        // Another identity is unaffected by agent-hog's limit (3 of 4 tunnels open while it runs).
        await goodTransfer(gwLimits, good);
        expect(await counter(gwLimits, 'limit_rejections_total{reason="identity_tunnel_limit"}')).toBe(
          identityBefore + 1,
        );

        for (let i = 0; i < 2; i++) held.push(await openTunnel(b, 'echo.test:443'));
        expect(held.map((t) => t.status)).toEqual([200, 200, 200, 200]);
        const full = await connectH2(gwLimits.port, { ca: gwLimits.caPem, carrier: good });
        try {
          const refused = await openTunnel(full, 'echo.test:443');
          expect(refused.status).toBe(503);
          expect(refused.headers['agent-gateway-deny-reason']).toBe('tunnel_limit');
        } finally {
          await closeSession(full);
        }
        expect(await counter(gwLimits, 'limit_rejections_total{reason="tunnel_limit"}')).toBe(
          totalBefore + 1,
        );
        const line = await gwLimits.proc.waitForLog(
          (l) => l.json?.['msg'] === 'CONNECT denied' && l.json?.['deny_reason'] === 'tunnel_limit',
        );
        expect(line.json).toMatchObject({ source_identity: 'agent-good' });

        // A slot freed is a slot usable: the good client gets through once one tunnel closes.
        const released = held.pop()!;
        released.stream.end();
        await closed(released.stream);
        await expect.poll(() => counter(gwLimits, 'tunnels_open'), { timeout: 10_000 }).toBe(3);
        await goodTransfer(gwLimits, good);
      } finally {
        for (const t of held) t.stream.close();
        await Promise.all([closeSession(a), closeSession(b)]);
      }
    }, 90_000);
  });
});
