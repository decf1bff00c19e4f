/**
 * PKCS#11 describes an EC public key as two attributes, CKA_EC_PARAMS (the curve OID) and CKA_EC_POINT
 * (a DER OCTET STRING around the uncompressed point); the registry stores SubjectPublicKeyInfo DER.
 * Pure: no module, no token.
 */
import { createPublicKey } from 'node:crypto';
import * as asn1js from 'asn1js';
import { errorText } from '../core/error-text.js';
import { SignerError } from './signer-error.js';

/** prime256v1 (P-256), the only curve the registry accepts. */
export const P256_OID = '1.2.840.10045.3.1.7';

/** CKA_EC_PARAMS (OID) + CKA_EC_POINT (DER OCTET STRING around the uncompressed point) → SPKI DER. */
export function ecPointToSpki(ecParams: Uint8Array, ecPoint: Uint8Array, label = 'key'): Buffer {
  const unsupported = (why: string) =>
    new SignerError('key_unsupported', `key ${JSON.stringify(label)}: ${why}`);
  const oid = asn1js.fromBER(toArrayView(ecParams));
  if (
    oid.offset !== ecParams.length ||
    !(oid.result instanceof asn1js.ObjectIdentifier) ||
    oid.result.getValue() !== P256_OID
  ) {
    throw unsupported('not a P-256 key (CKA_EC_PARAMS is not the prime256v1 OID)');
  }
  const octets = asn1js.fromBER(toArrayView(ecPoint));
  if (octets.offset !== ecPoint.length || !(octets.result instanceof asn1js.OctetString)) {
    throw unsupported('CKA_EC_POINT is not a DER OCTET STRING');
  }
  const raw = Buffer.from(octets.result.valueBlock.valueHexView);
  if (raw.length !== 65 || raw[0] !== 0x04)
    throw unsupported('public point is not an uncompressed P-256 point');
  try {
    // createPublicKey checks that the point is on the curve.
    return createPublicKey({
      key: {
        kty: 'EC',
        crv: 'P-256',
        x: raw.subarray(1, 33).toString('base64url'),
        y: raw.subarray(33, 65).toString('base64url'),
      },
      format: 'jwk',
    }).export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw unsupported(`public point rejected: ${errorText(err)}`);
  }
}

// asn1js reads a view of exactly these bytes; a Buffer may be a window on a larger pooled ArrayBuffer.
function toArrayView(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
