// Identity claims must not hurt anyone else (issue #13 items 5 and 6, and item 1's per-address budgets).
// A real gateway process, a real (own) PostgreSQL, loopback only; clients that claim what they cannot
// prove (another agent's identity, a 30,000-character identity, a huge :authority, random keys from one
// address) against a real agent whose CONNECTs must keep getting 200. Every loop is bounded.
import { randomBytes } from 'node:crypto';
import http2, { type ClientHttp2Session, constants } from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey, createTestCa } from '../../dev-support/pki.js';
import { createMigratedDatabase, type PgHandle, startPostgres } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  roundTrip,
  scrapeMetric,
  startGatewayProcess,
  type TunnelResult,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const LOG_LINE_MAX_BYTES = 4096;
const REGISTRY_LOOKUPS = 'agent_gateway_registry_query_seconds_count{query="active_candidates"}';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** connectH2 from a chosen loopback source address (127.0.0.0/8 is all local on Linux). */
function connectFrom(
  port: number,
  ca: string,
  carrier: Carrier,
  localAddress: string,
): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://localhost:${port}`, {
      createConnection: () =>
        tls.connect({
          socket: net.connect({ host: '127.0.0.1', port, localAddress }),
          servername: 'localhost',
          ca,
          cert: carrier.certPem,
          key: carrier.keyPem,
          ALPNProtocols: ['h2'],
        }),
    });
    const onError = (err: Error) => reject(err);
    session.once('error', onError);
    session.once('connect', () => {
      session.off('error', onError);
      session.on('error', () => {});
      resolve(session);
    });
  });
}

/** A tunnel that echoes: 200 and 64 KiB there and back. */
async function expectWorkingTunnel(session: ClientHttp2Session, why: string): Promise<void> {
  const t = await openTunnel(session, 'echo.test:443');
  expect(t.status, `${why}: ${String(t.headers['agent-gateway-deny-reason'])}`).toBe(200);
  const payload = randomBytes(64 * 1024);
  expect((await roundTrip(t.stream, payload)).equals(payload)).toBe(true);
  t.stream.end();
  await closed(t.stream);
}

function denyReason(t: TunnelResult): string {
  return t.status === 200 ? 'ok' : `${t.status} ${String(t.headers['agent-gateway-deny-reason'])}`;
}

function tally(outcomes: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const o of outcomes) out[o] = (out[o] ?? 0) + 1;
  return out;
}

describe('identity claims must not hurt anyone else (issue #13)', () => {
  let pg: PgHandle;
  let dbUrl: string;
  let echo: Upstream;
  /** Every limit at its default. */
  let gw: GatewayProcess;
  /** Small per-address limits, so their edges are reachable in a test. */
  let gwAddr: GatewayProcess;
  /** A short unproven-connection deadline. */
  let gwDeadline: GatewayProcess;
  let agent: Carrier;
  let other: Carrier;

  const lookups = async (g: GatewayProcess) => (await scrapeMetric(g.adminPort!, REGISTRY_LOOKUPS)) ?? 0;
  const linesOver = (g: GatewayProcess, max: number) =>
    g.proc.lines.filter((l) => Buffer.byteLength(l.text) >= max).map((l) => l.text.slice(0, 200));

  beforeAll(async () => {
    pg = await startPostgres();
    dbUrl = await createMigratedDatabase(pg.url, 'gateway_identity_claims');
    echo = await startEchoServer();
    [agent, other] = (await Promise.all([createCarrier('build-agent-01'), createCarrier('agent-other')])) as [
      Carrier,
      Carrier,
    ];
    const principal = createPrincipalKey();
    for (const c of [agent, other]) {
      await grant(dbUrl, {
        principalId: 'org-claims',
        principal,
        identity: c.identity,
        subjectSpkiDer: c.spkiDer,
        destination: 'echo.test:443',
      });
    }
    const overrides = { 'echo.test:443': `127.0.0.1:${echo.port}` };
    const ca = await createTestCa();
    [gw, gwDeadline, gwAddr] = await Promise.all([
      startGatewayProcess({ databaseUrl: dbUrl, ca, config: { upstream: { overrides } } }),
      startGatewayProcess({
        databaseUrl: dbUrl,
        ca,
        config: { upstream: { overrides }, server: { unproven_connection_timeout_ms: 1500 } },
      }),
      startGatewayProcess({
        databaseUrl: dbUrl,
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
    await Promise.all([gw?.cleanup(), gwDeadline?.cleanup(), gwAddr?.cleanup()]);
    await echo?.close();
    await pg?.destroy();
  });

  describe('bounded identities and log lines (item 6)', () => {
    it('denies a 30,000-character identity (403 invalid_identity_extension), then GOAWAY; its log lines stay under 4 KiB', async () => {
      // Only the extension carries it: with the identity in subject and issuer too (a 90 KB certificate),
      // node's HTTP/2 client fails the TLS exchange (internal_error alert) before any request is sent.
      const huge = await createCarrier('a'.repeat(30_000), { commonName: 'huge-identity' });
      const before = await lookups(gw);
      const s = await connectH2(gw.port, { ca: gw.caPem, carrier: huge });
      const goaway = new Promise<number>((resolve) => s.once('goaway', (code) => resolve(code)));
      const sessionClosed = new Promise<void>((resolve) => s.once('close', () => resolve()));
      try {
        const t = await openTunnel(s, 'echo.test:443');
        expect(denyReason(t)).toBe('403 invalid_identity_extension');
        expect(await Promise.race([goaway, sleep(5000).then(() => 'no GOAWAY')])).toBe(
          constants.NGHTTP2_NO_ERROR,
        );
        expect(
          await Promise.race([sessionClosed.then(() => 'closed'), sleep(10_000).then(() => 'open')]),
        ).toBe('closed');
      } finally {
        s.destroy();
      }
      const [line] = await gw.waitForLogs(
        'CONNECT denied',
        (l) => l['deny_reason'] === 'invalid_identity_extension',
      );
      expect(line).toMatchObject({ source_identity: null, status: 403 });
      expect(String(line!['deny_detail'])).toMatch(/30000 bytes, longer than 256/);
      // Refused before any registry work.
      expect(await lookups(gw)).toBe(before);
      expect(linesOver(gw, LOG_LINE_MAX_BYTES)).toEqual([]);
    });

    it('denies a 12,000-byte :authority (400 invalid_authority) and logs it under 4 KiB, capped and hashed', async () => {
      const s = await connectH2(gw.port, { ca: gw.caPem, carrier: other });
      const authority = `${'b'.repeat(12_000)}.example:443`;
      try {
        const t = await openTunnel(s, authority);
        expect(denyReason(t)).toBe('400 invalid_authority');
        await expectWorkingTunnel(s, 'the same client, a good authority');
      } finally {
        await closeSession(s);
      }
      const [line] = await gw.waitForLogs('CONNECT denied', (l) => l['deny_reason'] === 'invalid_authority');
      expect(String(line!['dest_authority'])).toMatch(/^b{64}…\[12012 chars, sha256 [0-9a-f]{16}…\]$/);
      expect(linesOver(gw, LOG_LINE_MAX_BYTES)).toEqual([]);
    });
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

  describe('rate limits by proven key (item 5)', () => {
    it('another key claiming a granted identity sends 1,500 CONNECTs; the real agent keeps getting 200 (default limits)', async () => {
      const impostor = await createCarrier(agent.identity);
      expect(impostor.identity).toBe('build-agent-01');
      const real = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
      const fake = await connectH2(gw.port, { ca: gw.caPem, carrier: impostor });
      const TOTAL = 1500;
      const IN_FLIGHT = 100;
      const outcomes: string[] = [];
      try {
        await expectWorkingTunnel(real, 'real agent before the flood');
        let sent = 0;
        // The real agent asks while the flood is in full swing: sent from inside the flood's own loop, with
        // the impostor's other CONNECTs in flight, at ten points past where a shared bucket (burst 400)
        // runs dry. One lucky refill token can let a single ask through a shared bucket; not ten.
        const marks = new Set(Array.from({ length: 10 }, (_, i) => 500 + i * 100));
        const realDuring: Promise<string>[] = [];
        // A sliding window, so the impostor's CONNECTs arrive continuously rather than in bursts.
        const worker = async () => {
          while (sent < TOTAL) {
            sent++;
            const t = await openTunnel(fake, 'echo.test:443');
            outcomes.push(denyReason(t));
            if (marks.has(outcomes.length)) {
              realDuring.push(
                openTunnel(real, 'echo.test:443').then((r) => {
                  r.stream.close();
                  return denyReason(r);
                }),
              );
            }
          }
        };
        await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
        expect(outcomes.length).toBe(TOTAL);
        const counts = tally(outcomes);
        expect(counts['ok'] ?? 0, JSON.stringify(counts)).toBe(0);
        const realOutcomes = await Promise.all(realDuring);
        const seen = JSON.stringify({ real_agent: tally(realOutcomes), impostor: counts });
        expect(realOutcomes, seen).toEqual(Array(10).fill('ok'));
        // The real agent's next CONNECT, right after the flood.
        await expectWorkingTunnel(real, 'real agent after the flood');
      } finally {
        fake.destroy();
        await closeSession(real);
      }
    }, 90_000);
  });
});
