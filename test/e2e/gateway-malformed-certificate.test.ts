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

const SEQUENCE_OF_NULL = [0x30, 0x02, 0x05, 0x00];
const EMPTY_GENERALIZED_TIME = [0x18, 0x00];

type BrokenCase = {
  readonly name: string;
  /** Extension OID and value bytes added to an otherwise valid carrier certificate. */
  readonly extension: readonly [oid: string, value: readonly number[]];
  /** The identity extension is replaced by `extension` instead of kept next to it. */
  readonly asIdentity: boolean;
  readonly reason: string;
};

/**
 * Extensions OpenSSL lets through the handshake (it does not decode them): authorityInfoAccess and
 * certificatePolicies holding a SEQUENCE of NULL instead of their schema, and an identity extension
 * holding an empty GeneralizedTime, which the BER decoder throws on instead of reporting.
 */
const BROKEN: readonly BrokenCase[] = [
  {
    name: 'authorityInfoAccess',
    extension: ['1.3.6.1.5.5.7.1.1', SEQUENCE_OF_NULL],
    asIdentity: false,
    reason: 'invalid_client_certificate',
  },
  {
    name: 'certificatePolicies',
    extension: ['2.5.29.32', SEQUENCE_OF_NULL],
    asIdentity: false,
    reason: 'invalid_client_certificate',
  },
  {
    name: 'identity-generalized-time',
    extension: [DEFAULT_IDENTITY_OID, EMPTY_GENERALIZED_TIME],
    asIdentity: true,
    reason: 'invalid_identity_extension',
  },
];

/** A self-issued client certificate for `identity` with the broken extension of `c`. */
async function carrierWith(identity: string, c: BrokenCase): Promise<Carrier> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const [oid, value] = c.extension;
  const broken = new x509.Extension(oid, false, new Uint8Array(value).buffer);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '0a',
    name: `CN=${identity}`,
    keys,
    signingAlgorithm: ALG,
    notBefore: new Date(Date.now() - 3_600_000),
    notAfter: new Date(Date.now() + 86_400_000),
    extensions: c.asIdentity ? [broken] : [broken, identityExtension(identity, DEFAULT_IDENTITY_OID)],
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
    broken = await Promise.all(BROKEN.map((c) => carrierWith(`agent-broken-${c.name}`, c)));
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

  it('gets its 403 with the reason, and the gateway keeps serving a granted client', async () => {
    for (const [i, c] of BROKEN.entries()) {
      const carrier = broken[i] as Carrier;
      const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
      try {
        const t = await within(openTunnel(session, 'echo.test:443'), `CONNECT with a broken ${c.name}`);
        expect(t.status, c.name).toBe(403);
        expect(t.headers['agent-gateway-deny-reason'], c.name).toBe(c.reason);
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
