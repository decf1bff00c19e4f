/**
 * Just enough DER to build client certificates around an arbitrary identity-extension value without a
 * signing step per input: core/identity-extension.ts never checks the certificate signature (the TLS
 * handshake proves possession of the key, docs/contract.md), so a certificate with a fixed signature
 * is exactly what a hostile client can present.
 */
import { generateKeyPairSync } from 'node:crypto';
import * as asn1js from 'asn1js';

/** One DER TLV with a minimal-length length field. */
export function tlv(tag: number, ...contents: readonly Uint8Array[]): Uint8Array {
  const body = Buffer.concat(contents);
  return Buffer.concat([Buffer.from([tag]), derLength(body.length), body]);
}

export function derLength(n: number): Uint8Array {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

const SEQUENCE = 0x30;
const SET = 0x31;
const INTEGER = 0x02;
const BIT_STRING = 0x03;
const OCTET_STRING = 0x04;
const UTF8_STRING = 0x0c;
const UTC_TIME = 0x17;

const oid = (dotted: string): Uint8Array =>
  new Uint8Array(new asn1js.ObjectIdentifier({ value: dotted }).toBER());
const ECDSA_WITH_SHA256 = tlv(SEQUENCE, oid('1.2.840.10045.4.3.2'));
const NAME = tlv(SEQUENCE, tlv(SET, tlv(SEQUENCE, oid('2.5.4.3'), tlv(UTF8_STRING, Buffer.from('carrier')))));
const VALIDITY = tlv(
  SEQUENCE,
  tlv(UTC_TIME, Buffer.from('260101000000Z')),
  tlv(UTC_TIME, Buffer.from('270101000000Z')),
);
/** An all-zero ECDSA-Sig-Value shape: parses, verifies nothing, as a forged certificate would. */
const SIGNATURE = tlv(
  BIT_STRING,
  Buffer.from([0]),
  tlv(SEQUENCE, tlv(INTEGER, Buffer.from([1])), tlv(INTEGER, Buffer.from([1]))),
);

/** The SPKI every fuzz certificate carries, so a parse can be checked against it byte for byte. */
export const TEMPLATE_SPKI_DER: Buffer = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({
  type: 'spki',
  format: 'der',
});

export type RawExtension = { readonly oid: string; readonly critical?: boolean; readonly value: Uint8Array };

/** A v3 certificate DER with these extensions in this order (none: no extensions field at all). */
export function certificateDer(
  extensions: readonly RawExtension[],
  spkiDer: Uint8Array = TEMPLATE_SPKI_DER,
): Buffer {
  const parts = [
    tlv(0xa0, tlv(INTEGER, Buffer.from([2]))),
    tlv(INTEGER, Buffer.from([1])),
    ECDSA_WITH_SHA256,
    NAME,
    VALIDITY,
    NAME,
    spkiDer,
  ];
  if (extensions.length > 0) {
    const encoded = extensions.map((e) =>
      tlv(
        SEQUENCE,
        oid(e.oid),
        ...(e.critical ? [tlv(0x01, Buffer.from([0xff]))] : []),
        tlv(OCTET_STRING, e.value),
      ),
    );
    parts.push(tlv(0xa3, tlv(SEQUENCE, ...encoded)));
  }
  return Buffer.from(tlv(SEQUENCE, tlv(SEQUENCE, ...parts), ECDSA_WITH_SHA256, SIGNATURE));
}
