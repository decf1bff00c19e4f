// The request path end to end, how the gateway answers a CONNECT that gets no tunnel: a real gateway
// process, a real registry (signed grants), real mTLS HTTP/2 clients, real loopback destinations. Status
// codes and log lines per docs/contract.md "CONNECT: answers and log lines". What moves through a tunnel is
// in gateway-tunnel-bytes.test.ts.
import { randomBytes } from 'node:crypto';
import { type ClientHttp2Session, constants } from 'node:http2';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { closed, closeSession, connectH2, type GatewayProcess, openTunnel } from '../support/gateway.js';
import { CONNECT_TIMEOUT_MS, startTunnelGateway, type TunnelGateway } from '../support/tunnel-gateway.js';
import { type BlackHole, startBlackHole, startEchoServer, type Upstream } from '../support/upstreams.js';

describe('gateway request path', () => {
  const adminUrl = inject('pgAdminUrl');
  let tunnelGateway: TunnelGateway;
  let gw: GatewayProcess;
  let agent: Carrier;
  let stranger: Carrier;
  let session: ClientHttp2Session;
  let counter: TunnelGateway['counter'];
  let echo: Upstream;
  let blackHole: BlackHole;
  let closedPort: number;

  beforeAll(async () => {
    [echo, blackHole, closedPort, stranger] = await Promise.all([
      startEchoServer(),
      startBlackHole(),
      freePort(),
      createCarrier('agent-stranger'),
    ]);
    tunnelGateway = await startTunnelGateway(
      adminUrl,
      'gateway_tunnel_answers',
      {
        'docstore:443': `127.0.0.1:${echo.port}`,
        'blackhole.test:443': `127.0.0.1:${blackHole.port}`,
        'closed.test:443': `127.0.0.1:${closedPort}`,
        'metadata.test:80': '169.254.169.254:80',
      },
      ['169.254.169.254:80'],
    );
    ({ gw, agent, session, counter } = tunnelGateway);
  });

  afterAll(async () => {
    await tunnelGateway?.stop();
    await Promise.all([echo?.close(), blackHole?.close()]);
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
});
