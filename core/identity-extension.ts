/**
 * Client identity as the gateway sees it: the first extension at the configured OID, which must be
 * exactly one DER UTF8String, plus the exact SubjectPublicKeyInfo DER of the leaf certificate.
 * The certificate chain is never trusted; the TLS handshake's proof of possession binds the key.
 */
import { readTbsFields } from './certificate-fields.js';
import { errorText } from './error-text.js';
import {
  DEFAULT_IDENTITY_OID,
  decodeIdentityExtensionValue,
  encodeIdentityExtensionValue,
} from './identity-value.js';
import { x509 } from './x509.js';

export {
  DEFAULT_IDENTITY_OID,
  encodeIdentityExtensionValue,
  identityLengthError,
  isValidOid,
  MAX_IDENTITY_BYTES,
} from './identity-value.js';

export type IdentityFailure =
  | 'missing_client_certificate'
  | 'invalid_client_certificate'
  | 'missing_identity_extension'
  | 'invalid_identity_extension';

export type PeerIdentity = { readonly identity: string; readonly spkiDer: Buffer };

export type IdentityResult =
  | { readonly ok: true; readonly peer: PeerIdentity }
  | { readonly ok: false; readonly reason: IdentityFailure; readonly detail: string };

/** Read identity and SPKI from a leaf certificate's DER. Never throws. */
export function readPeerIdentity(certDer: Uint8Array | undefined, oid: string): IdentityResult {
  if (certDer === undefined || certDer.length === 0) {
    return { ok: false, reason: 'missing_client_certificate', detail: 'no client certificate presented' };
  }
  let extension: x509.Extension | undefined;
  try {
    const cert = new x509.X509Certificate(certDer);
    // The extension list is decoded lazily and each known extension against its schema: a self-issued
    // certificate with, say, a malformed certificatePolicies throws here, after the constructor succeeded
    // (found by test/fuzz/identity-extension.fuzz.ts; it ended the gateway process).
    extension = cert.extensions.find((e) => e.type === oid);
  } catch (err) {
    return {
      ok: false,
      reason: 'invalid_client_certificate',
      detail: `certificate does not parse: ${errorText(err)}`,
    };
  }
  // The exact key bytes, not @peculiar/x509's re-encoding of them (core/certificate-fields.ts).
  const tbs = readTbsFields(certDer);
  if (!tbs.ok) return { ok: false, reason: 'invalid_client_certificate', detail: tbs.detail };
  const spkiDer = tbs.spkiDer;
  if (extension === undefined) {
    return {
      ok: false,
      reason: 'missing_identity_extension',
      detail: `no extension ${oid} in client certificate`,
    };
  }
  const decoded = decodeIdentityExtensionValue(extension.value);
  if (typeof decoded !== 'string') {
    return { ok: false, reason: 'invalid_identity_extension', detail: `extension ${oid}: ${decoded.error}` };
  }
  return { ok: true, peer: { identity: decoded, spkiDer } };
}

/** A non-critical X.509 extension at `oid` carrying `identity`. */
export function identityExtension(identity: string, oid = DEFAULT_IDENTITY_OID): x509.Extension {
  return new x509.Extension(oid, false, encodeIdentityExtensionValue(identity));
}
