/**
 * Throwaway TLS material for one bench run, all ECDSA P-256: a bench CA, a server certificate for the
 * proxies (localhost / 127.0.0.1), one for the TLS sink (SINK_NAME), software carrier certificates with
 * the identity extension, and a principal signing key for grants.
 */
import { createPrivateKey, generateKeyPairSync, type KeyObject, webcrypto } from 'node:crypto';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

import { identityExtension } from '../../core/identity-extension.js';
import { x509 } from '../../core/x509.js';

export const SINK_NAME = 'sink.bench.internal';

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export type Pem = { readonly certPem: string; readonly keyPem: string };

export type Carrier = Pem & { readonly identity: string; readonly spkiDer: Buffer };

export type BenchPki = {
  readonly caPem: string;
  readonly server: Pem;
  readonly sink: Pem;
  /** Software-key carrier certificate for `identity`. */
  carrier(identity: string): Promise<Carrier>;
  /** Carrier certificate for an externally held key (a TPM key), given its SPKI DER. */
  carrierForSpki(identity: string, spkiDer: Uint8Array): Promise<string>;
};

export type SigningKey = { readonly privateKey: KeyObject; readonly spkiDer: Buffer };

function serial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] ?? 0) & 0x7f || 1;
  return Buffer.from(bytes).toString('hex');
}

async function generate(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function keyPem(key: CryptoKey): Promise<string> {
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' })
    .export({ type: 'pkcs8', format: 'pem' })
    .toString();
}

const validity = () => ({
  notBefore: new Date(Date.now() - 3_600_000),
  notAfter: new Date(Date.now() + 30 * 86_400_000),
});

export async function createPki(): Promise<BenchPki> {
  const caKeys = await generate();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=agent_gateway bench CA',
    keys: caKeys,
    signingAlgorithm: ALG,
    ...validity(),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });

  const leaf = async (
    subject: string,
    publicKey: CryptoKey | Uint8Array,
    extensions: x509.Extension[],
  ): Promise<string> => {
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject,
      issuer: ca.subject,
      publicKey: publicKey instanceof Uint8Array ? Buffer.from(publicKey) : publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: ALG,
      ...validity(),
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), ...extensions],
    });
    return cert.toString('pem');
  };

  const serverLeaf = async (cn: string, dns: string[]): Promise<Pem> => {
    const keys = await generate();
    const certPem = await leaf(`CN=${cn}`, keys.publicKey, [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
      new x509.SubjectAlternativeNameExtension([
        ...dns.map((value) => ({ type: 'dns' as const, value })),
        { type: 'ip', value: '127.0.0.1' },
      ]),
    ]);
    return { certPem, keyPem: await keyPem(keys.privateKey) };
  };

  const clientExtensions = (identity: string) => [
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
    identityExtension(identity),
  ];

  return {
    caPem: ca.toString('pem'),
    server: await serverLeaf('localhost', ['localhost']),
    sink: await serverLeaf(SINK_NAME, [SINK_NAME]),
    async carrier(identity) {
      const keys = await generate();
      const certPem = await leaf(`CN=${identity}`, keys.publicKey, clientExtensions(identity));
      const spkiDer = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
      return { certPem, keyPem: await keyPem(keys.privateKey), identity, spkiDer };
    },
    carrierForSpki(identity, spkiDer) {
      return leaf(`CN=${identity}`, spkiDer, clientExtensions(identity));
    },
  };
}

/** A principal's P-256 signing key (software; the real registry keeps it in a TPM via PKCS#11). */
export function principalKey(): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { privateKey, spkiDer: publicKey.export({ type: 'spki', format: 'der' }) };
}
