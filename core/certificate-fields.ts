/**
 * The fields of a certificate's TBSCertificate as asn1js reads them, and the SubjectPublicKeyInfo
 * exactly as the certificate carries it. The gateway compares that SPKI byte for byte with the
 * registered key (docs/contract.md "Identity"), so it must be the bytes on the wire, not a
 * re-encoding: @peculiar/x509 re-serialises the key and turns a BIT STRING with unused bits into one
 * without, which let two different certificates read as the same key (found by
 * test/unit/sidecar-carrier-identity.test.ts, where the sidecar and the gateway disagreed).
 */
import * as asn1js from 'asn1js';
import { errorText } from './error-text.js';

// Context-specific tags in TBSCertificate (RFC 5280 section 4.1).
const TAG_CLASS_CONTEXT = 3;
const VERSION_TAG = 0;

export type TbsFields =
  | {
      readonly ok: true;
      readonly fields: readonly asn1js.AsnType[];
      /** Index of subjectPublicKeyInfo in `fields`. */
      readonly spkiAt: number;
      readonly spkiDer: Buffer;
    }
  | { readonly ok: false; readonly detail: string };

export function isContextTag(f: asn1js.AsnType | undefined, tag: number): boolean {
  return f !== undefined && f.idBlock.tagClass === TAG_CLASS_CONTEXT && f.idBlock.tagNumber === tag;
}

/** The TBSCertificate fields of `der` and its exact SubjectPublicKeyInfo DER. Never throws. */
export function readTbsFields(der: Uint8Array): TbsFields {
  let fields: asn1js.AsnType[];
  try {
    const parsed = asn1js.fromBER(der);
    if (parsed.offset === -1)
      return { ok: false, detail: `certificate does not parse: ${parsed.result.error}` };
    const tbs = (parsed.result as asn1js.Sequence).valueBlock.value?.[0];
    if (!(tbs instanceof asn1js.Sequence)) return { ok: false, detail: 'certificate has no TBSCertificate' };
    fields = tbs.valueBlock.value;
  } catch (err) {
    return { ok: false, detail: `certificate does not parse: ${errorText(err)}` };
  }
  // version [0] is optional; then serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo.
  const spkiAt = (isContextTag(fields[0], VERSION_TAG) ? 1 : 0) + 5;
  const spki = fields[spkiAt];
  if (!(spki instanceof asn1js.Sequence)) return { ok: false, detail: 'certificate has no public key' };
  return { ok: true, fields, spkiAt, spkiDer: Buffer.from(spki.valueBeforeDecodeView) };
}
