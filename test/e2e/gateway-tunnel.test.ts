// The request path end to end: a real gateway process, a real registry (signed grants), real mTLS HTTP/2
// clients, real loopback destinations. Status codes and log lines per docs/contract.md "CONNECT: answers and
// log lines".
import { createHash, randomBytes } from 'node:crypto';
import { type ClientHttp2Session, constants } from 'node:http2';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
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
} from '../support/gateway.js';
import {
  type BlackHole,
  pumpPattern,
  startBlackHole,
  startBulkServer,
  startEchoServer,
  startHalfCloseServer,
  startResetServer,
  type Upstream,
} from '../support/upstreams.js';

const IDLE_MS = 1500;
const CONNECT_TIMEOUT_MS = 1000;

describe('gateway request path', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let agent: Carrier;
  let stranger: Carrier;
  let echo: Upstream;
  let halfClose: Upstream;
  let resetter: Upstream;
  let abandon: Upstream;
  let bulk: Awaited<ReturnType<typeof startBulkServer>>;
  let blackHole: BlackHole;
  let closedPort: number;
  let session: ClientHttp2Session;
  const MiB = 1024 * 1024;
  /** agent_gateway_<series> from /metrics; a labelled counter not yet incremented is absent, i.e. 0. */
  const counter = async (series: string) =>
    (await scrapeMetric(gw.adminPort!, `agent_gateway_${series}`)) ?? 0;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'gateway_tunnel');
    [echo, halfClose, bulk, blackHole, closedPort, resetter, abandon] = await Promise.all([
      startEchoServer(),
      startHalfCloseServer(),
      startBulkServer(32 * MiB),
      startBlackHole(),
      freePort(),
      startResetServer(),
      startEchoServer(),
    ]);
    agent = await createCarrier('agent-alpha');
    stranger = await createCarrier('agent-stranger');
    const principal = createPrincipalKey();
    const g = {
      principalId: 'org-alice',
      principal,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
    };
    for (const destination of [
      'docstore:443',
      'halfclose.test:443',
      'bulk.test:443',
      'blackhole.test:443',
      'closed.test:443',
      'idle.test:443',
      'reset.test:443',
      'abandon.test:443',
      'metadata.test:80',
      '169.254.169.254:80',
      `127.0.0.1:${echo.port}`,
    ]) {
      await grant(dbUrl, { ...g, destination });
    }
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        upstream: {
          connect_timeout_ms: CONNECT_TIMEOUT_MS,
          tunnel_idle_timeout_ms: IDLE_MS,
          overrides: {
            'docstore:443': `127.0.0.1:${echo.port}`,
            'idle.test:443': `localhost:${echo.port}`,
            'halfclose.test:443': `127.0.0.1:${halfClose.port}`,
            'reset.test:443': `127.0.0.1:${resetter.port}`,
            'abandon.test:443': `127.0.0.1:${abandon.port}`,
            'bulk.test:443': `127.0.0.1:${bulk.port}`,
            'blackhole.test:443': `127.0.0.1:${blackHole.port}`,
            'closed.test:443': `127.0.0.1:${closedPort}`,
            'metadata.test:80': '169.254.169.254:80',
          },
        },
      },
    });
    session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
  });

  afterAll(async () => {
    if (session) await closeSession(session);
    await gw?.cleanup();
    await Promise.all([
      echo?.close(),
      halfClose?.close(),
      bulk?.close(),
      blackHole?.close(),
      resetter?.close(),
      abandon?.close(),
    ]);
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('tunnels an echo round trip through an upstream override, and logs it per the contract', async () => {
    const t = await openTunnel(session, 'docstore:443', {
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    expect(t.status).toBe(200);
    const back = await roundTrip(t.stream, Buffer.from('hello through the gateway\n'));
    expect(back.toString()).toBe('hello through the gateway\n');
    t.stream.end();
    await closed(t.stream);

    const allowed = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'CONNECT allowed' && l.json?.['dest_authority'] === 'docstore:443',
    );
    expect(allowed.json).toMatchObject({
      source_identity: 'agent-alpha',
      dest_authority: 'docstore:443',
      policy_decision: 'allow',
      trace_id: '0af7651916cd43dd8448eb211c80319c',
    });
    expect(allowed.json?.['source_peer_addr']).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(allowed.json?.['permission_id']).toEqual(expect.any(String));
    expect(allowed.json?.['signing_key_id']).toBe('org-alice');
    const closedLine = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'tunnel closed' && l.json?.['dest_authority'] === 'docstore:443',
    );
    expect(closedLine.json).toMatchObject({ bytes_client_to_dest: 26, bytes_dest_to_client: 26 });
  });

  it('writes a lone decision line promptly although the log is written in batches', async () => {
    // Nothing else is logging: the line waits for the batch flush tick (100 ms), not for more lines.
    const traceId = randomBytes(16).toString('hex');
    const sent = Date.now();
    const t = await openTunnel(session, 'elsewhere.test:443', {
      traceparent: `00-${traceId}-b7ad6b7169203331-01`,
    });
    expect(t.status).toBe(403);
    const [line] = await gw.waitForLogs('CONNECT denied', (l) => l['trace_id'] === traceId, 2000);
    expect(line).toMatchObject({ deny_reason: 'no_permission' });
    expect(Date.now() - sent).toBeLessThan(1000);
  });

  it('counts the bytes of an open tunnel in agent_gateway_bytes_total before it closes', async () => {
    const bytes = async () => ({
      up: await counter('bytes_total{direction="client_to_dest"}'),
      down: await counter('bytes_total{direction="dest_to_client"}'),
    });
    const before = await bytes();
    const t = await openTunnel(session, 'docstore:443');
    expect(t.status).toBe(200);
    const payload = randomBytes(200_000);
    expect((await roundTrip(t.stream, payload)).equals(payload)).toBe(true);
    // The tunnel is still open (neither side has ended it): its bytes are already counted.
    expect(t.stream.closed).toBe(false);
    expect(await bytes()).toEqual({ up: before.up + payload.length, down: before.down + payload.length });
    t.stream.end();
    await closed(t.stream);
    await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'tunnel closed' && l.json?.['bytes_client_to_dest'] === payload.length,
    );
    // Closing moves them from the open tunnel to the closed total: the counter neither drops nor doubles.
    expect(await bytes()).toEqual({ up: before.up + payload.length, down: before.down + payload.length });
  });

  it('dials IP-literal destinations too', async () => {
    const t = await openTunnel(session, `127.0.0.1:${echo.port}`);
    expect(t.status).toBe(200);
    expect((await roundTrip(t.stream, Buffer.from('ip'))).toString()).toBe('ip');
    t.stream.end();
    await closed(t.stream);
  });

  it('moves 32 MiB each way at once, byte-exact (sha256)', async () => {
    const before = bulk.results.length;
    const t = await openTunnel(session, 'bulk.test:443');
    expect(t.status).toBe(200);
    const inHash = createHash('sha256');
    let received = 0;
    const downloaded = new Promise<void>((resolve) => {
      t.stream.on('data', (c: Buffer) => {
        received += c.length;
        inHash.update(c);
      });
      t.stream.on('end', () => resolve());
    });
    t.stream.resume();
    const { sent, sha256: upSha } = pumpPattern(t.stream, 32 * MiB, 0xabcdef);
    await Promise.all([sent, downloaded]);
    await closed(t.stream);
    await expect.poll(() => bulk.results.length, { timeout: 10_000 }).toBe(before + 1);
    const result = bulk.results.at(-1)!;
    expect(result.received).toBe(32 * MiB);
    expect(result.receivedSha256).toBe(upSha);
    expect(received).toBe(32 * MiB);
    expect(inHash.digest('hex')).toBe(result.sentSha256);
  }, 60_000);

  it('half-closes: client END_STREAM reaches the destination as FIN, its answer and FIN come back', async () => {
    const t = await openTunnel(session, 'halfclose.test:443');
    expect(t.status).toBe(200);
    const payload = randomBytes(100_000);
    t.stream.end(payload);
    const body = await t.body();
    expect(body.toString()).toBe(
      `received 100000 bytes ${createHash('sha256').update(payload).digest('hex')}\n`,
    );
    const { rstCode } = await closed(t.stream);
    expect(rstCode).toBe(constants.NGHTTP2_NO_ERROR);
  });

  it('turns an upstream reset into RST_STREAM(CONNECT_ERROR)', async () => {
    const t = await openTunnel(session, 'reset.test:443');
    expect(t.status).toBe(200);
    t.stream.resume();
    t.stream.write('trigger');
    expect((await closed(t.stream)).rstCode).toBe(constants.NGHTTP2_CONNECT_ERROR);
    const line = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'tunnel closed' && l.json?.['dest_authority'] === 'reset.test:443',
    );
    expect(line.json).toMatchObject({ end_reason: 'upstream_reset', bytes_client_to_dest: 7 });
    expect(session.destroyed).toBe(false);
  });

  it('destroys the upstream socket when the client resets the stream or drops the connection', async () => {
    const t = await openTunnel(session, 'abandon.test:443');
    expect((await roundTrip(t.stream, Buffer.from('x'))).toString()).toBe('x');
    expect(abandon.openSockets()).toBe(1);
    t.stream.close(constants.NGHTTP2_CANCEL);
    await expect.poll(() => abandon.openSockets(), { timeout: 5000 }).toBe(0);
    const reset = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'tunnel closed' && l.json?.['dest_authority'] === 'abandon.test:443',
    );
    expect(reset.json).toMatchObject({ end_reason: 'client_reset' });

    const doomed = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    const tunnels = await Promise.all([1, 2, 3].map(() => openTunnel(doomed, 'abandon.test:443')));
    for (const x of tunnels) expect((await roundTrip(x.stream, Buffer.from('y'))).toString()).toBe('y');
    expect(abandon.openSockets()).toBe(3);
    doomed.destroy();
    await expect.poll(() => abandon.openSockets(), { timeout: 5000 }).toBe(0);
    // The client's own stream resets may beat its EOF to the gateway: either way, nothing is left open.
    await expect
      .poll(() => gw.logs('tunnel closed').filter((l) => l['dest_authority'] === 'abandon.test:443').length, {
        timeout: 5000,
      })
      .toBe(4);
    for (const l of gw
      .logs('tunnel closed')
      .filter((x) => x['dest_authority'] === 'abandon.test:443')
      .slice(1)) {
      expect(['session_closed', 'client_reset']).toContain(l['end_reason']);
    }
  });

  it('runs 20 concurrent tunnels on one connection', async () => {
    const tunnels = await Promise.all(Array.from({ length: 20 }, () => openTunnel(session, 'docstore:443')));
    expect(tunnels.map((t) => t.status)).toEqual(Array(20).fill(200));
    const payloads = tunnels.map((_, i) => randomBytes(50_000 + i));
    const echoed = await Promise.all(tunnels.map((t, i) => roundTrip(t.stream, payloads[i]!)));
    for (const [i, b] of echoed.entries()) expect(b.equals(payloads[i]!)).toBe(true);
    for (const t of tunnels) t.stream.end();
    await Promise.all(tunnels.map((t) => closed(t.stream)));
  });

  it('answers 405 to anything but CONNECT', async () => {
    const t = await openTunnel(session, 'docstore:443', {}, 'GET');
    expect(t.status).toBe(405);
    expect(t.headers['allow']).toBe('CONNECT');
  });

  it('answers 400 invalid_authority to an unparsable authority', async () => {
    for (const authority of ['docstore:0', 'docstore:99999', '127.1:443', 'bad_host.:443']) {
      const t = await openTunnel(session, authority);
      expect(t.status, authority).toBe(400);
      expect(t.headers['agent-gateway-deny-reason']).toBe('invalid_authority');
    }
    const denied = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'CONNECT denied' && l.json?.['dest_authority'] === '127.1:443',
    );
    expect(denied.json).toMatchObject({
      policy_decision: 'deny',
      deny_reason: 'invalid_authority',
      source_identity: 'agent-alpha',
    });
  });

  it('denies 403 no_permission for a destination nobody signed, and for an identity without rows', async () => {
    const t = await openTunnel(session, 'unsigned.example:443');
    expect(t.status).toBe(403);
    expect(t.headers['agent-gateway-deny-reason']).toBe('no_permission');
    const other = await connectH2(gw.port, { ca: gw.caPem, carrier: stranger });
    try {
      const s = await openTunnel(other, 'docstore:443');
      expect(s.status).toBe(403);
    } finally {
      await closeSession(other);
    }
  });

  it('answers 502 when the destination refuses the connection', async () => {
    const t = await openTunnel(session, 'closed.test:443');
    expect(t.status).toBe(502);
    const line = await gw.proc.waitForLog(
      (l) =>
        l.json?.['msg'] === 'upstream connect failed' && l.json?.['dest_authority'] === 'closed.test:443',
    );
    expect(line.json).toMatchObject({ dial_error: 'refused' });
  });

  it('answers 502 within the connect timeout when the destination black-holes SYNs', async () => {
    const started = Date.now();
    const t = await openTunnel(session, 'blackhole.test:443');
    const elapsed = Date.now() - started;
    expect(t.status).toBe(502);
    expect(elapsed).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
    expect(elapsed).toBeLessThan(CONNECT_TIMEOUT_MS + 1500);
    const line = await gw.proc.waitForLog(
      (l) =>
        l.json?.['msg'] === 'upstream connect failed' && l.json?.['dest_authority'] === 'blackhole.test:443',
    );
    expect(line.json).toMatchObject({ dial_error: 'timeout' });
  });

  it('refuses the metadata address (403 destination_address_denied) before dialing, literal or via override', async () => {
    const decisions = async () => ({
      addressDenied: await counter(
        'connect_decisions_total{result="deny",reason="destination_address_denied"}',
      ),
      allowed: await counter('connect_decisions_total{result="allow",reason="none"}'),
    });
    const before = await decisions();
    for (const authority of ['169.254.169.254:80', 'metadata.test:80']) {
      const started = Date.now();
      const t = await openTunnel(session, authority);
      expect(t.status, authority).toBe(403);
      expect(t.headers['agent-gateway-deny-reason']).toBe('destination_address_denied');
      // Refused by the guard, not by a dial attempt that timed out.
      expect(Date.now() - started).toBeLessThan(CONNECT_TIMEOUT_MS);
      const line = await gw.proc.waitForLog(
        (l) => l.json?.['msg'] === 'CONNECT denied' && l.json?.['dest_authority'] === authority,
      );
      expect(line.json).toMatchObject({ deny_reason: 'destination_address_denied', policy_decision: 'deny' });
    }
    expect(
      gw
        .logs('CONNECT allowed')
        .filter(
          (l) =>
            String(l['dest_authority']).includes('169.254') || l['dest_authority'] === 'metadata.test:80',
        ),
    ).toEqual([]);
    // Both destinations are granted, so policy allowed them; the final outcome, counted once, is the deny.
    expect(await decisions()).toEqual({ addressDenied: before.addressDenied + 2, allowed: before.allowed });
  });

  it('closes a tunnel idle for tunnel_idle_timeout_ms (END_STREAM, logged with the reason)', async () => {
    const t = await openTunnel(session, 'idle.test:443');
    expect(t.status).toBe(200);
    expect((await roundTrip(t.stream, Buffer.from('ping'))).toString()).toBe('ping');
    const started = Date.now();
    const ended = new Promise<void>((resolve) => t.stream.once('end', () => resolve()));
    t.stream.resume();
    await ended;
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(IDLE_MS - 200);
    expect(elapsed).toBeLessThan(IDLE_MS + 2000);
    t.stream.end();
    expect((await closed(t.stream)).rstCode).toBe(constants.NGHTTP2_NO_ERROR);
    const line = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'tunnel closed' && l.json?.['dest_authority'] === 'idle.test:443',
    );
    expect(line.json).toMatchObject({
      end_reason: 'idle_timeout',
      bytes_client_to_dest: 4,
      bytes_dest_to_client: 4,
    });
  });

  it('denies 403 missing_client_certificate to a client without a certificate, without a registry query', async () => {
    const anon = await connectH2(gw.port, { ca: gw.caPem });
    try {
      const t = await openTunnel(anon, 'docstore:443');
      expect(t.status).toBe(403);
      expect(t.headers['agent-gateway-deny-reason']).toBe('missing_client_certificate');
    } finally {
      await closeSession(anon);
    }
    const line = await gw.proc.waitForLog(
      (l) => l.json?.['msg'] === 'CONNECT denied' && l.json?.['deny_reason'] === 'missing_client_certificate',
    );
    expect(line.json).toMatchObject({
      source_identity: null,
      policy_decision: 'deny',
      dest_authority: 'docstore:443',
    });
  });

  it('denies 403 when the certificate lacks the identity extension or holds the wrong type', async () => {
    for (const [extension, reason] of [
      ['missing', 'missing_identity_extension'],
      ['not_utf8string', 'invalid_identity_extension'],
    ] as const) {
      const carrier = await createCarrier('agent-alpha', { extension });
      const s = await connectH2(gw.port, { ca: gw.caPem, carrier });
      try {
        const t = await openTunnel(s, 'docstore:443');
        expect(t.status).toBe(403);
        expect(t.headers['agent-gateway-deny-reason']).toBe(reason);
      } finally {
        await closeSession(s);
      }
    }
  });

  it('refuses an http/1.1-only client in the TLS handshake (ALPN h2 only)', async () => {
    const err = await new Promise<Error | undefined>((resolve) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: gw.port,
        servername: 'localhost',
        ca: gw.caPem,
        cert: agent.certPem,
        key: agent.keyPem,
        ALPNProtocols: ['http/1.1'],
      });
      socket.once('secureConnect', () => {
        socket.destroy();
        resolve(undefined);
      });
      socket.once('error', (e) => resolve(e));
    });
    expect(err?.message).toMatch(/no application protocol/i);
  });

  it('answers each stream with a complete response, so denials never cost the client a reset', async () => {
    const t = await openTunnel(session, 'unsigned.example:443');
    expect(t.status).toBe(403);
    await t.body();
    const { rstCode } = await closed(t.stream);
    expect(rstCode).toBe(constants.NGHTTP2_NO_ERROR);
    expect(session.destroyed).toBe(false);
  });

  it('sends GOAWAY ENHANCE_YOUR_CALM to a client that resets too many streams', async () => {
    const s = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    const goaway = new Promise<number>((resolve) => s.once('goaway', (code) => resolve(code)));
    // Default budget is 200 per 10 s; cancel streams on a tunnel that is open (reset by the client).
    // Until the GOAWAY ends the session: CONNECTs the rate limiter answers first do not count as resets.
    for (let i = 0; i < 1000 && !s.destroyed && !s.closed; i++) {
      const stream = s.request({ ':method': 'CONNECT', ':authority': 'docstore:443' });
      stream.on('error', () => {});
      stream.close(constants.NGHTTP2_CANCEL);
      if (i % 20 === 19) await new Promise((r) => setTimeout(r, 20));
    }
    const code = await goaway;
    expect(code).toBe(constants.NGHTTP2_ENHANCE_YOUR_CALM);
    s.destroy();
  });

  it('leaves no tunnel or upstream socket behind after 300 short tunnels', async () => {
    for (let round = 0; round < 15; round++) {
      const batch = await Promise.all(Array.from({ length: 20 }, () => openTunnel(session, 'docstore:443')));
      for (const t of batch) t.stream.end();
      await Promise.all(batch.map((t) => t.body()));
      await Promise.all(batch.map((t) => closed(t.stream)));
    }
    await expect
      .poll(() => scrapeMetric(gw.adminPort!, 'agent_gateway_tunnels_open'), { timeout: 5000 })
      .toBe(0);
    await expect.poll(() => echo.openSockets(), { timeout: 5000 }).toBe(0);
    for (const u of [halfClose, bulk, resetter, abandon]) expect(u.openSockets()).toBe(0);
  });
});
