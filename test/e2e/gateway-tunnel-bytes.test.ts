// The request path end to end, what moves through a tunnel: a real gateway process, a real registry
// (signed grants), real mTLS HTTP/2 clients, real loopback destinations. Bytes both ways, half-close,
// resets from either side, the idle timeout, and nothing left behind; log lines per docs/contract.md
// "CONNECT: answers and log lines". The answers to CONNECTs that get no tunnel are in
// gateway-tunnel-answers.test.ts.
import { createHash, randomBytes } from 'node:crypto';
import { type ClientHttp2Session, constants } from 'node:http2';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Carrier } from '../../dev-support/pki.js';
import {
  closed,
  connectH2,
  type GatewayProcess,
  openTunnel,
  roundTrip,
  scrapeMetric,
} from '../support/gateway.js';
import { IDLE_MS, startTunnelGateway, type TunnelGateway } from '../support/tunnel-gateway.js';
import {
  pumpPattern,
  startBulkServer,
  startEchoServer,
  startHalfCloseServer,
  startResetServer,
  type Upstream,
} from '../support/upstreams.js';

describe('gateway request path', () => {
  const adminUrl = inject('pgAdminUrl');
  let tunnelGateway: TunnelGateway;
  let gw: GatewayProcess;
  let agent: Carrier;
  let session: ClientHttp2Session;
  let counter: TunnelGateway['counter'];
  let echo: Upstream;
  let halfClose: Upstream;
  let resetter: Upstream;
  let abandon: Upstream;
  let bulk: Awaited<ReturnType<typeof startBulkServer>>;
  const MiB = 1024 * 1024;

  beforeAll(async () => {
    [echo, halfClose, bulk, resetter, abandon] = await Promise.all([
      startEchoServer(),
      startHalfCloseServer(),
      startBulkServer(32 * MiB),
      startResetServer(),
      startEchoServer(),
    ]);
    tunnelGateway = await startTunnelGateway(
      adminUrl,
      'gateway_tunnel_bytes',
      {
        'docstore:443': `127.0.0.1:${echo.port}`,
        'idle.test:443': `localhost:${echo.port}`,
        'halfclose.test:443': `127.0.0.1:${halfClose.port}`,
        'reset.test:443': `127.0.0.1:${resetter.port}`,
        'abandon.test:443': `127.0.0.1:${abandon.port}`,
        'bulk.test:443': `127.0.0.1:${bulk.port}`,
      },
      [`127.0.0.1:${echo.port}`],
    );
    ({ gw, agent, session, counter } = tunnelGateway);
  });

  afterAll(async () => {
    await tunnelGateway?.stop();
    await Promise.all([
      echo?.close(),
      halfClose?.close(),
      bulk?.close(),
      resetter?.close(),
      abandon?.close(),
    ]);
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
