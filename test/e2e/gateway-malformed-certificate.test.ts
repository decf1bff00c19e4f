// Found by the identity-extension fuzz target (test/fuzz/identity-extension.fuzz.ts): a client
// certificate with an extension whose value does not match its schema made readPeerIdentity throw while
// decoding the extension list, and the uncaught exception ended the gateway process. Anyone can present
// such a self-issued certificate. Through the real gateway process: the client gets its 403, and the
// gateway keeps serving everyone else.
import { createPrivateKey, webcrypto } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DEFAULT_IDENTITY_OID, identityExtension } from '../../core/identity-extension.js';
import { x509 } from '../../core/x509.js';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  roundTrip,
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const adminUrl = inject('pgAdminUrl');
const DB = 'gateway_malformed_certificate';
const ANSWER_MS = 5000;

/** A CONNECT answer or a named failure, never a hang (the old code left this stream unanswered). */
function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ANSWER_MS} ms`)), ANSWER_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/**
 * Extensions OpenSSL lets through the handshake (it does not decode them) whose value is a SEQUENCE
 * holding NULL instead of their schema: authorityInfoAccess and certificatePolicies.
 */
const BROKEN_EXTENSIONS = [
  ['authorityInfoAccess', '1.3.6.1.5.5.7.1.1'],
  ['certificatePolicies', '2.5.29.32'],
] as const;

/** A self-issued client certificate with a valid identity extension plus one broken extension. */
async function carrierWithBrokenExtension(identity: string, oid: string): Promise<Carrier> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '0a',
    name: `CN=${identity}`,
    keys,
    signingAlgorithm: ALG,
    notBefore: new Date(Date.now() - 3_600_000),
    notAfter: new Date(Date.now() + 86_400_000),
    extensions: [
      new x509.Extension(oid, false, new Uint8Array([0x30, 0x02, 0x05, 0x00]).buffer),
      identityExtension(identity, DEFAULT_IDENTITY_OID),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' })
    .export({ type: 'pkcs8', format: 'pem' })
    .toString();
  const spkiDer = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
  return { certPem: cert.toString('pem'), keyPem, identity, spkiDer };
}

describe('a client certificate with an unparseable extension', () => {
  let gw: GatewayProcess;
  let echo: Upstream;
  let good: Carrier;
  let broken: Carrier[];
  let dbUrl: string;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, DB);
    echo = await startEchoServer();
    good = await createCarrier('agent-good');
    broken = await Promise.all(
      BROKEN_EXTENSIONS.map(([name, oid]) => carrierWithBrokenExtension(`agent-broken-${name}`, oid)),
    );
    const principal = createPrincipalKey();
    for (const c of [good, ...broken]) {
      await grant(dbUrl, {
        principalId: 'org-malformed',
        principal,
        identity: c.identity,
        subjectSpkiDer: c.spkiDer,
        destination: 'echo.test:443',
      });
    }
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: { upstream: { overrides: { 'echo.test:443': `127.0.0.1:${echo.port}` } } },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    await echo?.close();
    if (dbUrl !== undefined) await dropDatabase(adminUrl, dbUrl);
  });

  it('gets 403 invalid_client_certificate, and the gateway keeps serving a granted client', async () => {
    for (const carrier of broken) {
      const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
      try {
        const t = await within(openTunnel(session, 'echo.test:443'), `CONNECT of ${carrier.identity}`);
        expect(t.status, carrier.identity).toBe(403);
        expect(t.headers['agent-gateway-deny-reason'], carrier.identity).toBe('invalid_client_certificate');
      } finally {
        await closeSession(session);
      }
    }

    expect(gw.proc.exitInfo(), `gateway exited:\n${gw.proc.tail(20)}`).toBeNull();
    const ok = await connectH2(gw.port, { ca: gw.caPem, carrier: good });
    try {
      const t = await within(openTunnel(ok, 'echo.test:443'), 'CONNECT of the granted client');
      expect(t.status).toBe(200);
      const payload = Buffer.from('still serving');
      expect((await roundTrip(t.stream, payload, payload.length, 10_000)).equals(payload)).toBe(true);
      t.stream.end();
      await closed(t.stream);
    } finally {
      await closeSession(ok);
    }
  });
});
