// Identity claims must not hurt anyone else (issue #13 items 1 and 6): connections that prove nothing, and
// the per-address budgets. Real gateway processes with a short unproven-connection deadline or small
// per-address limits, a real (own) PostgreSQL, loopback only; clients that claim what they cannot prove
// (identities without a grant, random keys from one address) against a real agent whose CONNECTs must keep
// getting 200. Every loop is bounded. Bounded identities and rate limits by proven key are in
// gateway-identity-claims-bounds.test.ts.
import { randomBytes } from 'node:crypto';
import { type ClientHttp2Session, constants } from 'node:http2';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Carrier, createCarrier, createTestCa } from '../../dev-support/pki.js';
import type { PgHandle } from '../../dev-support/postgres.js';
import {
  connectFrom,
  denyReason,
  expectWorkingTunnel,
  lookups,
  startClaimsRegistry,
  tally,
} from '../support/claims-clients.js';
import {
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  scrapeMetric,
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('identity claims must not hurt anyone else (issue #13)', () => {
  let pg: PgHandle;
  let echo: Upstream;
  /** Small per-address limits, so their edges are reachable in a test. */
  let gwAddr: GatewayProcess;
  /** A short unproven-connection deadline. */
  let gwDeadline: GatewayProcess;
  let agent: Carrier;
  let other: Carrier;

  beforeAll(async () => {
    const registry = await startClaimsRegistry('gateway_identity_claims_unproven');
    ({ pg, agent, other } = registry);
    echo = await startEchoServer();
    const overrides = { 'echo.test:443': `127.0.0.1:${echo.port}` };
    const ca = await createTestCa();
    [gwDeadline, gwAddr] = await Promise.all([
      startGatewayProcess({
        databaseUrl: registry.dbUrl,
        ca,
        config: { upstream: { overrides }, server: { unproven_connection_timeout_ms: 1500 } },
      }),
      startGatewayProcess({
        databaseUrl: registry.dbUrl,
        ca,
        config: {
          upstream: { overrides },
          limits: {
            max_connections_per_address: 8,
            max_unproven_connections_per_address: 4,
            denied_connect_rate_per_address: 1,
            denied_connect_burst_per_address: 20,
          },
        },
      }),
    ]);
  });

  afterAll(async () => {
    await Promise.all([gwDeadline?.cleanup(), gwAddr?.cleanup()]);
    await echo?.close();
    await pg?.destroy();
  });

  describe('connections that prove nothing (items 1 and 6)', () => {
    it('GOAWAYs a connection with no allowed CONNECT after unproven_connection_timeout_ms; a proven one stays', async () => {
      const stranger = await createCarrier('agent-unknown');
      const idle = await connectH2(gwDeadline.port, { ca: gwDeadline.caPem, carrier: stranger });
      const proven = await connectH2(gwDeadline.port, { ca: gwDeadline.caPem, carrier: agent });
      const idleGoaway = new Promise<number>((resolve) => idle.once('goaway', (code) => resolve(code)));
      let provenGoaway = false;
      proven.once('goaway', () => {
        provenGoaway = true;
      });
      try {
        expect(denyReason(await openTunnel(idle, 'echo.test:443'))).toBe('403 no_permission');
        await expectWorkingTunnel(proven, 'proven connection');
        const started = Date.now();
        expect(await Promise.race([idleGoaway, sleep(6000).then(() => 'no GOAWAY')])).toBe(
          constants.NGHTTP2_NO_ERROR,
        );
        expect(Date.now() - started).toBeLessThan(5000);
        await sleep(1000);
        expect(provenGoaway).toBe(false);
        await expectWorkingTunnel(proven, 'proven connection, later');
      } finally {
        idle.destroy();
        await closeSession(proven);
      }
      expect(
        await scrapeMetric(
          gwDeadline.adminPort!,
          'agent_gateway_limit_rejections_total{reason="unproven_connection_timeout"}',
        ),
      ).toBeGreaterThanOrEqual(1);
    });

    it('refuses unproven connections from one address beyond max_unproven_connections_per_address (GOAWAY ENHANCE_YOUR_CALM)', async () => {
      const strangers = await Promise.all(
        Array.from({ length: 5 }, (_, i) => createCarrier(`stranger-${i}`)),
      );
      const held: ClientHttp2Session[] = [];
      try {
        for (const c of strangers.slice(0, 4))
          held.push(await connectFrom(gwAddr.port, gwAddr.caPem, c, '127.0.0.3'));
        const fifth = await connectFrom(gwAddr.port, gwAddr.caPem, strangers[4]!, '127.0.0.3');
        held.push(fifth);
        const code = await Promise.race([
          new Promise<number>((resolve) => fifth.once('goaway', (c) => resolve(c))),
          sleep(5000).then(() => -1),
        ]);
        expect(code).toBe(constants.NGHTTP2_ENHANCE_YOUR_CALM);
        // Another address is unaffected.
        const s = await connectFrom(gwAddr.port, gwAddr.caPem, agent, '127.0.0.1');
        await expectWorkingTunnel(s, 'client from another address');
        await closeSession(s);
      } finally {
        for (const s of held) s.destroy();
      }
    });

    it('drops TCP connections from one address beyond max_connections_per_address, before TLS', async () => {
      const open = (localAddress: string) =>
        new Promise<net.Socket>((resolve, reject) => {
          const c = net.connect({ host: '127.0.0.1', port: gwAddr.port, localAddress }, () => resolve(c));
          c.on('error', reject);
        });
      const held: net.Socket[] = [];
      try {
        for (let i = 0; i < 8; i++) held.push(await open('127.0.0.4'));
        const ninth = await open('127.0.0.4');
        held.push(ninth);
        const ended = await Promise.race([
          new Promise<string>((resolve) => {
            ninth.on('error', () => {});
            ninth.once('close', () => resolve('closed'));
          }),
          sleep(3000).then(() => 'open'),
        ]);
        expect(ended).toBe('closed');
        for (const c of held.slice(0, 8)) expect(c.destroyed, 'the first 8 stay open').toBe(false);
        // The slot is the address's, not the gateway's: others connect and tunnel as usual.
        const s = await connectFrom(gwAddr.port, gwAddr.caPem, agent, '127.0.0.1');
        await expectWorkingTunnel(s, 'client from another address');
        await closeSession(s);
        // One closed, one more allowed.
        held[0]!.destroy();
        await sleep(200);
        const again = await open('127.0.0.4');
        held.push(again);
        await sleep(300);
        expect(again.destroyed).toBe(false);
      } finally {
        for (const c of held) c.destroy();
      }
      expect(
        await scrapeMetric(
          gwAddr.adminPort!,
          'agent_gateway_limit_rejections_total{reason="address_connection_limit"}',
        ),
      ).toBeGreaterThanOrEqual(1);
    });

    it('stops registry lookups for an address flooding denied CONNECTs with random keys (429 address_rate_limited); others get 200', async () => {
      // As many connections as max_unproven_connections_per_address lets one address hold.
      const FLOODERS = 4;
      const PER_FLOODER = 60;
      const flooders = await Promise.all(
        Array.from({ length: FLOODERS }, () => createCarrier(`random-${randomBytes(6).toString('hex')}`)),
      );
      const sessions = await Promise.all(
        flooders.map((c) => connectFrom(gwAddr.port, gwAddr.caPem, c, '127.0.0.2')),
      );
      const before = await lookups(gwAddr);
      const started = Date.now();
      const outcomes: string[] = [];
      const legit: string[] = [];
      try {
        const flood = Promise.all(
          sessions.map(async (s) => {
            for (let i = 0; i < PER_FLOODER; i++) {
              const t = await openTunnel(s, `127.0.0.1:${1024 + Math.floor(Math.random() * 60_000)}`);
              outcomes.push(denyReason(t));
              t.stream.close();
            }
          }),
        );
        // A legitimate client from another address, during the flood: its first CONNECT is answered 200.
        const during = async () => {
          await sleep(50);
          const s = await connectH2(gwAddr.port, { ca: gwAddr.caPem, carrier: other });
          const t = await openTunnel(s, 'echo.test:443');
          legit.push(denyReason(t));
          t.stream.close();
          await closeSession(s);
        };
        await Promise.all([flood, during()]);
        const elapsedS = (Date.now() - started) / 1000;
        const counts = tally(outcomes);
        expect(outcomes.length).toBe(FLOODERS * PER_FLOODER);
        expect(
          Object.keys(counts).every((k) => k === '403 no_permission' || k === '429 address_rate_limited'),
          JSON.stringify(counts),
        ).toBe(true);
        // Burst 20, then 1 per second: everything beyond that was refused without a registry query.
        const budget = 20 + Math.ceil(elapsedS) + 1;
        expect(counts['429 address_rate_limited'] ?? 0, JSON.stringify(counts)).toBeGreaterThanOrEqual(
          FLOODERS * PER_FLOODER - budget,
        );
        const flooded = (await lookups(gwAddr)) - before;
        // The legitimate client's one lookup, plus at most the budget.
        expect(flooded, JSON.stringify(counts)).toBeLessThanOrEqual(budget + 1);
        expect(legit).toEqual(['ok']);

        // Still flooding, the registry query count stays put (give or take the 1/s refill).
        const afterFlood = await lookups(gwAddr);
        const again: string[] = [];
        for (let i = 0; i < 50; i++) {
          const t = await openTunnel(sessions[i % FLOODERS]!, `127.0.0.1:${1024 + i}`);
          again.push(denyReason(t));
          t.stream.close();
        }
        expect(tally(again)['429 address_rate_limited'] ?? 0).toBeGreaterThanOrEqual(45);
        expect((await lookups(gwAddr)) - afterFlood).toBeLessThanOrEqual(3);
      } finally {
        for (const s of sessions) s.destroy();
      }
      const line = await gwAddr.proc.waitForLog(
        (l) => l.json?.['msg'] === 'CONNECT denied' && l.json?.['deny_reason'] === 'address_rate_limited',
      );
      expect(line.json).toMatchObject({ status: 429 });
    }, 60_000);
  });
});
