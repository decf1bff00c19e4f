// An in-test HTTP/2 CONNECT gateway for the sidecar proxy's unit tests, over real TLS and real sockets: a
// software client key and its PKI, an echo destination behind the gateway, and an agent that speaks CONNECT
// to the proxy.
import { webcrypto } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { createCarrierCertificate } from '../../core/carrier-cert.js';
import { readPeerIdentity } from '../../core/identity-extension.js';
import { x509 } from '../../core/x509.js';
import { GatewaySession } from '../../sidecar/gateway-session.js';
import { ProxyServer } from '../../sidecar/proxy-server.js';
import type { Tracing } from '../../sidecar/telemetry.js';

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const silent = pino({ level: 'silent' });
const noTracing: Tracing = { enabled: false, shutdown: async () => {} };

type Pki = {
  caPem: string;
  serverKeyPem: string;
  serverCertPem: string;
  clientKeyPem: string;
  clientCertPem: string;
};

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END PRIVATE KEY-----\n`;
}

async function makePki(serverNames: string[] = ['localhost']): Promise<Pki> {
  const caKeys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=sidecar test gateway CA',
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys: caKeys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  const serverKeys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  const server = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    issuer: ca.subject,
    subject: 'CN=test gateway',
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    publicKey: serverKeys.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.SubjectAlternativeNameExtension([
        ...serverNames.map((n) => ({ type: 'dns' as const, value: n })),
        { type: 'ip', value: '127.0.0.1' },
      ]),
      new x509.ExtendedKeyUsageExtension(['1.3.6.1.5.5.7.3.1']),
    ],
  });
  const clientKeys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', clientKeys.publicKey));
  const carrier = await createCarrierCertificate({ subjectSpkiDer: spki, identity: 'agent-test' });
  return {
    caPem: ca.toString('pem'),
    serverKeyPem: await keyPem(serverKeys.privateKey),
    serverCertPem: server.toString('pem'),
    clientKeyPem: await keyPem(clientKeys.privateKey),
    clientCertPem: carrier.pem,
  };
}

/** Echo server: echoes bytes; on the client's FIN writes "bye" and ends (proves half-close both ways). */
function startEcho(): Promise<{ port: number; server: net.Server; resets: Set<net.Socket> }> {
  const resets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    socket.once('data', (first: Buffer) => {
      if (first.toString().startsWith('RESET')) {
        resets.add(socket);
        socket.resetAndDestroy();
        return;
      }
      socket.write(first);
      socket.pipe(socket, { end: false });
    });
    socket.on('end', () => socket.end('bye'));
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ port: (server.address() as net.AddressInfo).port, server, resets }),
    ),
  );
}

type Gateway = {
  port: number;
  server: http2.Http2SecureServer;
  /** TLS connections accepted so far. */
  connections: number;
  /** Client identities seen per connection. */
  identities: string[];
  /** Request headers of every CONNECT. */
  requests: http2.IncomingHttpHeaders[];
  sessions: Set<http2.ServerHttp2Session>;
  close(): Promise<void>;
};

/**
 * A minimal CONNECT gateway: authority "deny.test:443" → 403, "slow.test:443" → waits 300 ms then 200 to the
 * echo server, anything else → 200 with a tunnel to the echo server. Upstream FIN → END_STREAM, upstream
 * reset → RST_STREAM(CONNECT_ERROR), client END_STREAM → FIN upstream.
 */
async function startGateway(pki: Pki, echoPort: number, port = 0): Promise<Gateway> {
  const g: Gateway = {
    port: 0,
    server: undefined as unknown as http2.Http2SecureServer,
    connections: 0,
    identities: [],
    requests: [],
    sessions: new Set(),
    close: async () => {},
  };
  const server = http2.createSecureServer({
    key: pki.serverKeyPem,
    cert: pki.serverCertPem,
    requestCert: true,
    rejectUnauthorized: false,
    allowHTTP1: false,
    settings: { initialWindowSize: 4 * 1024 * 1024 },
  });
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    g.connections += 1;
    const r = readPeerIdentity(socket.getPeerX509Certificate()?.raw, '1.3.6.1.4.1.57264.1.1');
    g.identities.push(r.ok ? r.peer.identity : `!${r.reason}`);
  });
  server.on('session', (session) => {
    g.sessions.add(session);
    session.on('connect', () => session.setLocalWindowSize(32 * 1024 * 1024));
    session.once('close', () => g.sessions.delete(session));
  });
  server.on('stream', (stream, headers) => {
    g.requests.push(headers);
    stream.on('error', () => {});
    const authority = headers[':authority'];
    if (headers[':method'] !== 'CONNECT') {
      stream.respond({ ':status': 405 }, { endStream: true });
      return;
    }
    if (authority === 'deny.test:443') {
      stream.respond({ ':status': 403 }, { endStream: true });
      return;
    }
    const open = () => {
      const upstream = net.connect({ host: '127.0.0.1', port: echoPort, allowHalfOpen: true });
      upstream.on('error', () => {});
      upstream.once('connect', () => {
        stream.respond({ ':status': 200 });
        stream.pipe(upstream);
        // Ended by hand: a reset upstream must become RST_STREAM(CONNECT_ERROR), never END_STREAM.
        upstream.pipe(stream, { end: false });
        upstream.once('end', () => stream.end());
      });
      upstream.on('close', (hadError) => {
        if (hadError && !stream.closed) stream.close(http2.constants.NGHTTP2_CONNECT_ERROR);
      });
      stream.on('close', () => upstream.destroy());
    };
    if (authority === 'slow.test:443') setTimeout(open, 300);
    else open();
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  g.port = (server.address() as net.AddressInfo).port;
  g.server = server;
  g.close = () =>
    new Promise<void>((resolve) => {
      for (const s of g.sessions) s.destroy();
      server.close(() => resolve());
    });
  return g;
}

type Agent = { socket: net.Socket; status: number; head: string; body: Buffer };

/** Plain TCP client that speaks CONNECT to the proxy and returns the socket after the response head. */
export function agentConnect(proxyPort: number, authority: string, extraHeaders = ''): Promise<Agent> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: proxyPort, allowHalfOpen: true });
    socket.once('error', reject);
    let buf: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      const head = buf.subarray(0, end).toString('latin1');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]);
      const rest = buf.subarray(end + 4);
      if (status !== 200) {
        const chunks: Buffer[] = [rest];
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.once('end', () => {
          socket.destroy();
          resolve({ socket, status, head, body: Buffer.concat(chunks) });
        });
        return;
      }
      if (rest.length > 0) socket.unshift(rest);
      resolve({ socket, status, head, body: Buffer.alloc(0) });
    };
    socket.on('data', onData);
    socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${extraHeaders}\r\n`);
  });
}

export function readAll(socket: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}

export function readExactly(socket: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (got >= n) {
        socket.off('data', onData);
        const all = Buffer.concat(chunks);
        if (all.length > n) socket.unshift(all.subarray(n));
        resolve(all.subarray(0, n));
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

/**
 * Call inside a describe: one PKI and echo destination for the block; startGw() and startProxy() start a
 * gateway and a proxy in front of it, both stopped after the test that started them.
 */
export function proxyHarness() {
  let pki: Pki;
  let echo: Awaited<ReturnType<typeof startEcho>>;
  const cleanups: Array<() => Promise<void> | void> = [];

  beforeAll(async () => {
    pki = await makePki();
    echo = await startEcho();
  });
  afterAll(async () => {
    await new Promise<void>((r) => echo.server.close(() => r()));
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  function secureContext(): tls.SecureContext {
    return tls.createSecureContext({
      key: pki.clientKeyPem,
      cert: pki.clientCertPem,
      ca: pki.caPem,
      minVersion: 'TLSv1.3',
    });
  }

  async function startProxy(gatewayPort: number, opts: { servername?: string } = {}) {
    const gateway = new GatewaySession({
      gateways: [{ host: '127.0.0.1', port: gatewayPort }],
      servername: opts.servername ?? 'localhost',
      secureContext: secureContext(),
      logger: silent,
      connectTimeoutMs: 3000,
    });
    const proxy = new ProxyServer({
      listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      gateway,
      tracing: noTracing,
      logger: silent,
    });
    const address = await proxy.listen();
    cleanups.push(async () => {
      await proxy.drain(0);
      gateway.destroy();
    });
    return { proxy, gateway, port: Number(address.slice(address.lastIndexOf(':') + 1)) };
  }

  async function startGw(port = 0) {
    const g = await startGateway(pki, echo.port, port);
    cleanups.push(() => g.close());
    return g;
  }

  return { startProxy, startGw };
}
