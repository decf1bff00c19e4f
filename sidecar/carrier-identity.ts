/**
 * The identity and key the sidecar's own carrier certificate presents to the gateway, read once at
 * start-up. The gateway reads client certificates with @peculiar/x509 (core/identity-extension.ts); the
 * sidecar walks the DER with asn1js instead, because whatever it loads stays in memory for the life of
 * the process, and that library would be most of an idle sidecar's heap (bench/README.md "Idle
 * memory"). The extension value is judged by the gateway's own rule (core/identity-value.ts), and the
 * walk takes the first extension at the OID, as the gateway does (docs/contract.md "Identity").
 */
import { X509Certificate } from 'node:crypto';
import * as asn1js from 'asn1js';
import { isContextTag, readTbsFields } from '../core/certificate-fields.js';
import { decodeIdentityExtensionValue } from '../core/identity-value.js';

export type CarrierIdentity =
  | { readonly ok: true; readonly identity: string; readonly spkiDer: Buffer }
  | { readonly ok: false; readonly detail: string };

/** DER of a PEM certificate, parsed by OpenSSL; throws when it is not a certificate. */
export function certificateDer(pem: string): Buffer {
  return new X509Certificate(pem).raw;
}

const EXTENSIONS_TAG = 3;

/** Identity (extension `oid`) and exact SubjectPublicKeyInfo DER of a certificate. Never throws. */
export function readCarrierIdentity(der: Uint8Array, oid: string): CarrierIdentity {
  const tbs = readTbsFields(der);
  if (!tbs.ok) return tbs;
  const { fields, spkiAt, spkiDer } = tbs;
  // After the key only issuerUniqueID [1] and subjectUniqueID [2] may come before the extensions [3].
  const wrapper = fields.slice(spkiAt + 1).find((f) => isContextTag(f, EXTENSIONS_TAG));
  const list = wrapper instanceof asn1js.Constructed ? wrapper.valueBlock.value[0] : undefined;
  const extensions = list instanceof asn1js.Sequence ? list.valueBlock.value : [];
  for (const ext of extensions) {
    if (!(ext instanceof asn1js.Sequence)) continue;
    const parts = ext.valueBlock.value;
    const id = parts[0];
    if (!(id instanceof asn1js.ObjectIdentifier) || id.valueBlock.toString() !== oid) continue;
    const value = parts[parts.length - 1];
    if (!(value instanceof asn1js.OctetString)) return { ok: false, detail: `extension ${oid} has no value` };
    const bytes = value.valueBlock.valueHexView;
    const decoded = decodeIdentityExtensionValue(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer,
    );
    if (typeof decoded !== 'string') return { ok: false, detail: `extension ${oid}: ${decoded.error}` };
    return { ok: true, identity: decoded, spkiDer };
  }
  return { ok: false, detail: `no extension ${oid} in the certificate` };
}
