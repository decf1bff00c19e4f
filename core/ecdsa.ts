/**
 * ECDSA P-256 / SHA-256 as stored in the registry: signatures are DER, keys are SPKI DER.
 * PKCS#11 tokens return raw r||s; rawToDer converts. High-S signatures verify (OpenSSL accepts them,
 * and the original system did).
 */
import { createPublicKey, type KeyObject, verify } from 'node:crypto';
import * as asn1js from 'asn1js';
import { errorText } from './error-text.js';

export const ALGORITHM_ECDSA_P256_SHA256 = 'ecdsa_p256_sha256';

export class InvalidPublicKeyError extends Error {
  constructor(why: string) {
    super(`invalid public key: ${why}`);
    this.name = 'InvalidPublicKeyError';
  }
}

/** Parse an SPKI DER and insist on an EC P-256 key. */
export function p256PublicKey(spkiDer: Uint8Array): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(spkiDer), format: 'der', type: 'spki' });
  } catch (err) {
    throw new InvalidPublicKeyError(`SPKI does not parse (${errorText(err)})`);
  }
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType !== 'ec' || details?.namedCurve !== 'prime256v1') {
    throw new InvalidPublicKeyError(
      `expected an EC P-256 key, got ${key.asymmetricKeyType} ${details?.namedCurve ?? ''}`.trim(),
    );
  }
  return key;
}

/** Verify a DER ECDSA signature over SHA-256(message). Never throws on a bad signature. */
export function verifyDerSignature(key: KeyObject, message: Uint8Array, signatureDer: Uint8Array): boolean {
  try {
    return verify('sha256', message, { key, dsaEncoding: 'der' }, signatureDer);
  } catch {
    return false;
  }
}

/** Raw r||s (64 bytes for P-256, as PKCS#11 CKM_ECDSA returns) → DER ECDSA-Sig-Value. */
export function rawToDer(raw: Uint8Array): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0)
    throw new Error(`raw ECDSA signature has odd length ${raw.length}`);
  const half = raw.length / 2;
  const toInteger = (bytes: Uint8Array) =>
    asn1js.Integer.fromBigInt(BigInt(`0x${Buffer.from(bytes).toString('hex') || '0'}`));
  const seq = new asn1js.Sequence({
    value: [toInteger(raw.subarray(0, half)), toInteger(raw.subarray(half))],
  });
  return Buffer.from(seq.toBER(false));
}
