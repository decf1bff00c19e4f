// Throwaway TLS material for tests and the benchmark, all ECDSA P-256, generated in-process:
// - createTestCa(): a CA that issues server certificates (localhost / 127.0.0.1), so clients verify the
//   gateway like a real sidecar does (ca + servername), and a SIGHUP test can tell two certs apart; it also
//   issues carrier certificates, for peers that verify the client chain (the bench's TLS endpoints).
// - createCarrier(identity): a self-issued client "carrier" certificate with the identity extension
//   (docs/contract.md "Carrier certificate"), or with a missing / malformed extension for the
//   identity-failure tests.
// - createPrincipalKey(): a principal's signing key for seeding signed grants (dev-support/registry-seed.ts).
import { createPrivateKey, generateKeyPairSync, type KeyObject, webcrypto } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_IDENTITY_OID, identityExtension } from '../core/identity-extension.js';
import { x509 } from '../core/x509.js';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export type PemPair = { readonly certPem: string; readonly keyPem: string };

export type Carrier = PemPair & {
  readonly identity: string;
  /** Exact SubjectPublicKeyInfo DER of the leaf: what a grant names. */
  readonly spkiDer: Buffer;
};

export type TestCa = {
  readonly certPem: string;
  /** A server certificate for localhost / 127.0.0.1 (and `names`), signed by this CA. */
  serverCert(opts?: { cn?: string; names?: readonly string[]; validDays?: number }): Promise<PemPair>;
  /** A carrier certificate for `identity` with a fresh software key, signed by this CA. */
  carrier(identity: string): Promise<Carrier>;
};

export type PrincipalKey = { readonly privateKey: KeyObject; readonly spkiDer: Buffer };

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

function validity(days = 30) {
  return { notBefore: new Date(Date.now() - 3_600_000), notAfter: new Date(Date.now() + days * 86_400_000) };
}

export async function createTestCa(name = 'agent_gateway test CA'): Promise<TestCa> {
  const caKeys = await generate();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${name}`,
    keys: caKeys,
    signingAlgorithm: ALG,
    ...validity(365),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  const issue = async (
    subject: string,
    publicKey: CryptoKey,
    extensions: x509.Extension[],
    validDays?: number,
  ): Promise<string> => {
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject,
      issuer: ca.subject,
      publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: ALG,
      ...validity(validDays),
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), ...extensions],
    });
    return cert.toString('pem');
  };
  return {
    certPem: ca.toString('pem'),
    async serverCert(opts = {}) {
      const keys = await generate();
      const certPem = await issue(
        `CN=${opts.cn ?? 'localhost'}`,
        keys.publicKey,
        [
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
          new x509.SubjectAlternativeNameExtension([
            { type: 'dns', value: 'localhost' },
            ...(opts.names ?? []).map((value) => ({ type: 'dns' as const, value })),
            { type: 'ip', value: '127.0.0.1' },
          ]),
        ],
        opts.validDays,
      );
      return { certPem, keyPem: await keyPem(keys.privateKey) };
    },
    async carrier(identity) {
      const keys = await generate();
      const certPem = await issue(`CN=${identity}`, keys.publicKey, carrierExtensions(identity));
      const spkiDer = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
      return { certPem, keyPem: await keyPem(keys.privateKey), identity, spkiDer };
    },
  };
}

export type CarrierOptions = {
  readonly oid?: string;
  /**
   * 'ok' (default): the identity as one DER UTF8String; 'missing': no identity extension;
   * 'not_utf8string': the extension holds a PrintableString instead.
   */
  readonly extension?: 'ok' | 'missing' | 'not_utf8string';
  /** Subject (and issuer) CN; default the identity, which a huge identity would put in the certificate thrice. */
  readonly commonName?: string;
};

function carrierExtensions(identity: string, opts: CarrierOptions = {}): x509.Extension[] {
  const oid = opts.oid ?? DEFAULT_IDENTITY_OID;
  const extensions: x509.Extension[] = [
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
  ];
  const kind = opts.extension ?? 'ok';
  if (kind === 'ok') extensions.push(identityExtension(identity, oid));
  if (kind === 'not_utf8string') {
    // PrintableString (tag 0x13) "x": a well-formed extension of the wrong type.
    extensions.push(new x509.Extension(oid, false, new Uint8Array([0x13, 0x01, 0x78]).buffer));
  }
  return extensions;
}

/** A self-issued client certificate carrying `identity` (the chain is never verified by the gateway). */
export async function createCarrier(identity: string, opts: CarrierOptions = {}): Promise<Carrier> {
  const keys = await generate();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${opts.commonName ?? identity}`,
    keys,
    signingAlgorithm: ALG,
    ...validity(),
    extensions: carrierExtensions(identity, opts),
  });
  const spkiDer = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
  return { certPem: cert.toString('pem'), keyPem: await keyPem(keys.privateKey), identity, spkiDer };
}

/** A principal's P-256 signing key (software here; the registry CLI keeps it in a TPM). */
export function createPrincipalKey(): PrincipalKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { privateKey, spkiDer: publicKey.export({ type: 'spki', format: 'der' }) };
}

/** Write a cert/key pair as `<base>.pem` and `<base>-key.pem` in `dir`; returns both paths. */
export async function writePemPair(
  dir: string,
  base: string,
  pair: PemPair,
): Promise<{ certPath: string; keyPath: string }> {
  const certPath = path.join(dir, `${base}.pem`);
  const keyPath = path.join(dir, `${base}-key.pem`);
  await writeFile(certPath, pair.certPem);
  await writeFile(keyPath, pair.keyPem, { mode: 0o600 });
  return { certPath, keyPath };
}
