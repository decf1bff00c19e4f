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
import { errorText } from '../core/error-text.js';
import { decodeIdentityExtensionValue } from '../core/identity-value.js';

export type CarrierIdentity =
  | { readonly ok: true; readonly identity: string; readonly spkiDer: Buffer }
  | { readonly ok: false; readonly detail: string };

/** DER of a PEM certificate, parsed by OpenSSL; throws when it is not a certificate. */
export function certificateDer(pem: string): Buffer {
  return new X509Certificate(pem).raw;
}

// Context-specific tags in TBSCertificate (RFC 5280 section 4.1).
const TAG_CLASS_CONTEXT = 3;
const VERSION_TAG = 0;
const EXTENSIONS_TAG = 3;

/** Identity (extension `oid`) and exact SubjectPublicKeyInfo DER of a certificate. Never throws. */
export function readCarrierIdentity(der: Uint8Array, oid: string): CarrierIdentity {
  let fields: asn1js.AsnType[];
  try {
    const parsed = asn1js.fromBER(der);
    if (parsed.offset === -1)
      return { ok: false, detail: `certificate does not parse: ${parsed.result.error}` };
    const tbs = (parsed.result as asn1js.Sequence).valueBlock.value[0];
    if (!(tbs instanceof asn1js.Sequence)) return { ok: false, detail: 'certificate has no TBSCertificate' };
    fields = tbs.valueBlock.value;
  } catch (err) {
    return { ok: false, detail: `certificate does not parse: ${errorText(err)}` };
  }
  const isContext = (f: asn1js.AsnType | undefined, tag: number) =>
    f !== undefined && f.idBlock.tagClass === TAG_CLASS_CONTEXT && f.idBlock.tagNumber === tag;
  // version [0] is optional; then serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo.
  const spkiAt = (isContext(fields[0], VERSION_TAG) ? 1 : 0) + 5;
  const spki = fields[spkiAt];
  if (!(spki instanceof asn1js.Sequence)) return { ok: false, detail: 'certificate has no public key' };
  const spkiDer = Buffer.from(spki.valueBeforeDecodeView);
  // After the key only issuerUniqueID [1] and subjectUniqueID [2] may come before the extensions [3].
  const wrapper = fields.slice(spkiAt + 1).find((f) => isContext(f, EXTENSIONS_TAG));
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
