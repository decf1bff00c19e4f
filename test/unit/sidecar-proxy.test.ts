// The sidecar's proxy and gateway session against a small in-test HTTP/2 CONNECT gateway, over real TLS and
// real sockets (test/support/sidecar-proxy-harness.ts). The client key here is a software key: these tests
// are about the proxy, the tunnel and the HTTP/2 connection handling; the TPM key path is covered end to end
// in test/e2e/sidecar-*.test.ts.
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import { describe, expect, it } from 'vitest';
import { agentConnect, proxyHarness, readAll, readExactly } from '../support/sidecar-proxy-harness.js';

describe('sidecar proxy over an HTTP/2 CONNECT gateway', () => {
  const { startProxy, startGw } = proxyHarness();

  it('answers non-CONNECT methods with 405', async () => {
    const g = await startGw();
    const { port } = await startProxy(g.port);
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: 'http://example.com/' }, resolve).once('error', reject);
    });
    expect(res.statusCode).toBe(405);
    expect(res.headers['allow']).toBe('CONNECT');
    res.resume();
    expect(g.connections).toBe(0);
  });

  it('tunnels bytes both ways with half-close in each direction', async () => {
    const g = await startGw();
    const { port } = await startProxy(g.port);
    const agent = await agentConnect(port, 'echo.test:443');
    expect(agent.status).toBe(200);
    agent.socket.write('hello');
    expect((await readExactly(agent.socket, 5)).toString()).toBe('hello');
    // Agent FIN → END_STREAM → FIN at the echo server, which answers "bye" and FINs back: data still flows
    // towards the half-closed agent, then its socket ends cleanly.
    const rest = readAll(agent.socket);
    agent.socket.end();
    expect((await rest).toString()).toBe('bye');
    expect(g.requests[0]?.[':authority']).toBe('echo.test:443');
    expect(g.identities).toEqual(['agent-test']);
    // Tracing is off here: no trace context is invented for the gateway.
    expect(g.requests[0]?.['traceparent']).toBeUndefined();
  });

  it('relays a gateway denial as the same status with "gateway denied request"', async () => {
    const g = await startGw();
    const { port } = await startProxy(g.port);
    const agent = await agentConnect(port, 'deny.test:443');
    expect(agent.status).toBe(403);
    expect(agent.body.toString()).toBe('gateway denied request');
  });

  it('answers 502 "gateway unreachable" while the gateway is down, and recovers when it returns', async () => {
    const g = await startGw();
    const gwPort = g.port;
    const { port, gateway } = await startProxy(gwPort);
    expect((await agentConnect(port, 'echo.test:443')).status).toBe(200);
    await g.close();
    const down = await agentConnect(port, 'echo.test:443');
    expect(down.status).toBe(502);
    expect(down.body.toString()).toBe('gateway unreachable');
    const back = await startGw(gwPort);
    const agent = await agentConnect(port, 'echo.test:443');
    expect(agent.status).toBe(200);
    agent.socket.write('again');
    expect((await readExactly(agent.socket, 5)).toString()).toBe('again');
    agent.socket.destroy();
    expect(back.connections).toBe(1);
    expect(gateway.connectionsEstablished).toBe(2);
  });

  it('multiplexes 50 concurrent agent tunnels over one TLS connection', async () => {
    const g = await startGw();
    const { port, gateway } = await startProxy(g.port);
    // slow.test answers after 300 ms, so all 50 CONNECTs are in flight at once before any tunnel opens.
    const agents = await Promise.all(Array.from({ length: 50 }, () => agentConnect(port, 'slow.test:443')));
    expect(agents.every((a) => a.status === 200)).toBe(true);
    await Promise.all(
      agents.map(async (a, i) => {
        const msg = `agent-${i}-${'x'.repeat(i)}`;
        a.socket.write(msg);
        expect((await readExactly(a.socket, msg.length)).toString()).toBe(msg);
      }),
    );
    expect(g.connections).toBe(1);
    expect(gateway.connectionsEstablished).toBe(1);
    for (const a of agents) a.socket.destroy();
  });

  it('moves new CONNECTs to a new connection after GOAWAY while the old tunnel keeps running', async () => {
    const g = await startGw();
    const { port } = await startProxy(g.port);
    const first = await agentConnect(port, 'echo.test:443');
    expect(first.status).toBe(200);
    for (const s of g.sessions) s.goaway(http2.constants.NGHTTP2_NO_ERROR);
    await new Promise((r) => setTimeout(r, 100));
    const second = await agentConnect(port, 'echo.test:443');
    expect(second.status).toBe(200);
    expect(g.connections).toBe(2);
    first.socket.write('old');
    expect((await readExactly(first.socket, 3)).toString()).toBe('old');
    second.socket.write('new');
    expect((await readExactly(second.socket, 3)).toString()).toBe('new');
    first.socket.destroy();
    second.socket.destroy();
  });

  it('carries 32 MiB each way intact with backpressure', async () => {
    const g = await startGw();
    const { port } = await startProxy(g.port);
    const agent = await agentConnect(port, 'echo.test:443');
    const payload = randomBytes(32 * 1024 * 1024);
    const want = createHash('sha256').update(payload).digest('hex');
    const received = readAll(agent.socket);
    agent.socket.end(payload);
    const got = await received;
    expect(got.length).toBe(payload.length + 3);
    expect(createHash('sha256').update(got.subarray(0, payload.length)).digest('hex')).toBe(want);
    expect(got.subarray(payload.length).toString()).toBe('bye');
  }, 60_000);

  it('turns an upstream reset into a reset of the agent socket', async () => {
    const g = await startGw();
    const { port } = await startProxy(g.port);
    const agent = await agentConnect(port, 'echo.test:443');
    const outcome = new Promise<string>((resolve) => {
      agent.socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      agent.socket.once('end', () => resolve('clean end'));
    });
    agent.socket.write('RESET please');
    expect(await outcome).toBe('ECONNRESET');
  });

  it('refuses a gateway whose certificate does not carry the expected name', async () => {
    const g = await startGw();
    const { port, gateway } = await startProxy(g.port, { servername: 'other-gateway.example' });
    const agent = await agentConnect(port, 'echo.test:443');
    expect(agent.status).toBe(502);
    expect(gateway.connectionsEstablished).toBe(0);
  });

  it('drains: refuses new agents, lets open tunnels finish, then resolves', async () => {
    const g = await startGw();
    const { proxy, port } = await startProxy(g.port);
    const agent = await agentConnect(port, 'echo.test:443');
    const drained = proxy.drain(10_000);
    await new Promise((r) => setTimeout(r, 100));
    await expect(agentConnect(port, 'echo.test:443')).rejects.toThrow(/ECONNREFUSED/);
    agent.socket.write('still');
    expect((await readExactly(agent.socket, 5)).toString()).toBe('still');
    const rest = readAll(agent.socket);
    agent.socket.end();
    expect((await rest).toString()).toBe('bye');
    expect(await drained).toBe(0);
    expect(proxy.activeTunnels).toBe(0);
  });

  it('cuts tunnels still open at the drain deadline', async () => {
    const g = await startGw();
    const { proxy, port } = await startProxy(g.port);
    const agent = await agentConnect(port, 'echo.test:443');
    agent.socket.on('error', () => {});
    const closed = new Promise((r) => agent.socket.once('close', r));
    expect(await proxy.drain(200)).toBe(1);
    await closed;
  });
});
