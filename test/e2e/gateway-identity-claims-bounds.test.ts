// Identity claims must not hurt anyone else (issue #13 items 5 and 6): bounded identities and log lines,
// and rate limits by proven key. A real gateway process with every limit at its default, a real (own)
// PostgreSQL, loopback only; clients that claim what they cannot prove (a 30,000-character identity, a huge
// :authority, another agent's identity under another key) against a real agent whose CONNECTs must keep
// getting 200. Every loop is bounded. Connections that prove nothing are in
// gateway-identity-claims-unproven.test.ts.
import { constants } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Carrier, createCarrier } from '../../dev-support/pki.js';
import type { PgHandle } from '../../dev-support/postgres.js';
import {
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
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const LOG_LINE_MAX_BYTES = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('identity claims must not hurt anyone else (issue #13)', () => {
  let pg: PgHandle;
  let echo: Upstream;
  /** Every limit at its default. */
  let gw: GatewayProcess;
  let agent: Carrier;
  let other: Carrier;

  const linesOver = (g: GatewayProcess, max: number) =>
    g.proc.lines.filter((l) => Buffer.byteLength(l.text) >= max).map((l) => l.text.slice(0, 200));

  beforeAll(async () => {
    const registry = await startClaimsRegistry('gateway_identity_claims_bounds');
    ({ pg, agent, other } = registry);
    echo = await startEchoServer();
    gw = await startGatewayProcess({
      databaseUrl: registry.dbUrl,
      config: { upstream: { overrides: { 'echo.test:443': `127.0.0.1:${echo.port}` } } },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
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
