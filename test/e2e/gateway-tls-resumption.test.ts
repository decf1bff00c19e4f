// An identity is proven by the key, every time (docs/contract.md "Identity"): the gateway issues no TLS
// session tickets and resumes no session. A resumed session would carry the client certificate of the
// handshake it came from, so whoever held the ticket (copied from the sidecar's memory) would be that
// agent without its TPM key. The attack: a full handshake with the agent's key, then a connection that
// presents only the saved session and no certificate, asking for the agent's granted destination.
import http2 from 'node:http2';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { type GatewayProcess, startGatewayProcess } from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const DESTINATION = 'echo.test:443';

describe('TLS session resumption', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let agent: Carrier;
  let echo: Upstream;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'gateway_tls_resumption');
    echo = await startEchoServer();
    agent = await createCarrier('agent-resume');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: DESTINATION,
    });
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: { upstream: { overrides: { [DESTINATION]: `127.0.0.1:${echo.port}` } } },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    await echo?.close();
    if (dbUrl !== undefined) await dropDatabase(adminUrl, dbUrl);
  });

  /** A full handshake with the agent's key; the session the client was given, if any. */
  function handshake(maxVersion: tls.SecureVersion): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      let session: Buffer | undefined;
      const s = tls.connect({
        host: '127.0.0.1',
        port: gw.port,
        ca: gw.caPem,
        servername: 'localhost',
        cert: agent.certPem,
        key: agent.keyPem,
        ALPNProtocols: ['h2'],
        maxVersion,
      });
      s.on('session', (x: Buffer) => {
        session = x;
      });
      s.on('error', reject);
      // TLS 1.3 tickets arrive after the handshake: give them a moment.
      s.on('secureConnect', () =>
        setTimeout(() => {
          s.destroy();
          resolve(session);
        }, 200),
      );
    });
  }

  /** CONNECT over a connection that offers `session` and no certificate: status and whether it resumed. */
  function connectWithSession(
    session: Buffer | undefined,
    maxVersion: tls.SecureVersion,
  ): Promise<{ status: number; reused: boolean; reason: string | undefined }> {
    return new Promise((resolve, reject) => {
      let reused = false;
      const client = http2.connect(`https://127.0.0.1:${gw.port}`, {
        ca: gw.caPem,
        servername: 'localhost',
        maxVersion,
        ...(session === undefined ? {} : { session }),
      });
      client.on('error', reject);
      client.socket.once('secureConnect', () => {
        reused = (client.socket as tls.TLSSocket).isSessionReused();
      });
      const req = client.request({ ':method': 'CONNECT', ':authority': DESTINATION });
      req.on('response', (headers) => {
        const reason = headers['agent-gateway-deny-reason'];
        resolve({
          status: Number(headers[':status']),
          reused,
          reason: typeof reason === 'string' ? reason : undefined,
        });
        client.destroy();
      });
      req.on('error', reject);
    });
  }

  it.each(['TLSv1.3', 'TLSv1.2'] as const)(
    '%s: a saved session without the key is a new handshake without a certificate, and the CONNECT is refused',
    async (version) => {
      const session = await handshake(version);
      const answer = await connectWithSession(session, version);
      expect(answer).toEqual({ status: 403, reused: false, reason: 'missing_client_certificate' });
    },
  );
});
