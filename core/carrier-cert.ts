/**
 * Carrier certificates (docs/contract.md "Carrier certificate"): an X.509 leaf whose only jobs are to carry a
 * TPM key's public key and the identity extension to the gateway. The gateway never verifies the chain, only
 * the handshake's proof of possession, so the issuer is a throwaway software key generated here and dropped
 * at once: nothing about the issuer is worth keeping or protecting, and keeping nothing means nothing can
 * leak.
 */
import { webcrypto } from 'node:crypto';
import { readTbsFields } from './certificate-fields.js';
import { p256PublicKey } from './ecdsa.js';
import {
  DEFAULT_IDENTITY_OID,
  identityExtension,
  identityLengthError,
  isValidOid,
} from './identity-extension.js';
import { assertEncodable } from './permission-bytes.js';
import { x509 } from './x509.js';

export type CarrierCertificateRequest = {
  /** SubjectPublicKeyInfo DER of the key that will prove possession (the TPM key). */
  readonly subjectSpkiDer: Uint8Array;
  /** The identity the gateway matches against signed rows, exactly as granted. */
  readonly identity: string;
  readonly oid?: string;
  readonly validDays?: number;
  /** Defaults to now; backdated one minute so a gateway with a slightly late clock accepts it. */
  readonly notBefore?: Date;
};

export type CarrierCertificate = {
  readonly pem: string;
  readonly der: Buffer;
};

const ECDSA_P256_SHA256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const CLIENT_AUTH_EKU = '1.3.6.1.5.5.7.3.2';

export async function createCarrierCertificate(req: CarrierCertificateRequest): Promise<CarrierCertificate> {
  const oid = req.oid ?? DEFAULT_IDENTITY_OID;
  if (!isValidOid(oid)) throw new Error(`identity extension OID ${JSON.stringify(oid)} is not a dotted OID`);
  if (req.identity === '') throw new Error('identity is empty');
  // Signed rows carry the identity in line-oriented text; an identity that cannot be granted is refused
  // here rather than producing a certificate that can never be authorized.
  assertEncodable('identity', req.identity);
  const tooLong = identityLengthError(req.identity);
  if (tooLong !== undefined) throw new Error(tooLong);
  // Throws unless the subject key is P-256: the registry only records ecdsa_p256_sha256 subjects.
  p256PublicKey(req.subjectSpkiDer);

  const validDays = req.validDays ?? 365;
  if (!Number.isInteger(validDays) || validDays < 1) throw new Error(`validDays must be a positive integer`);
  const notBefore = req.notBefore ?? new Date(Date.now() - 60_000);
  const notAfter = new Date(notBefore.getTime() + validDays * 86_400_000);

  const issuer = await webcrypto.subtle.generateKey(ECDSA_P256_SHA256, false, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    issuer: 'CN=agent-gateway throwaway carrier issuer',
    subject: `CN=${escapeDnValue(req.identity)}`,
    notBefore,
    notAfter,
    signingAlgorithm: ECDSA_P256_SHA256,
    publicKey: Buffer.from(req.subjectSpkiDer),
    signingKey: issuer.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([CLIENT_AUTH_EKU], false),
      identityExtension(req.identity, oid),
    ],
  });
  return { pem: `${cert.toString('pem')}\n`, der: Buffer.from(cert.rawData) };
}

/** SubjectPublicKeyInfo DER of a PEM or DER certificate. */
export function certificateSpki(cert: string | Uint8Array): Buffer {
  const tbs = readTbsFields(new Uint8Array(new x509.X509Certificate(cert).rawData));
  if (!tbs.ok) throw new Error(tbs.detail);
  return tbs.spkiDer;
}

// Positive 127-bit serial: the top bit clear keeps the DER INTEGER positive without a padding byte.
function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}

// The CN is cosmetic (the gateway reads the extension), but an identity with DN syntax must not change
// the subject's structure.
function escapeDnValue(value: string): string {
  return value.replace(/([,+"\\<>;=#])/g, '\\$1').replace(/^ | $/g, '\\ ');
}
