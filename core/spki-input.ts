/**
 * Reading an agent's public key the way admins have it at hand: a SubjectPublicKeyInfo or a certificate
 * (the agent's carrier certificate), as PEM or DER, in a file or as hex on the command line.
 *
 * The result is the exact SPKI DER the gateway will compare against the TLS client certificate, so
 * nothing here re-encodes a key: an SPKI is returned byte for byte, a certificate's SPKI is the slice
 * the certificate carries (for a DER certificate, the bytes core/identity-extension.ts reads from the
 * leaf). Certificates are checked with Node's built-in X509Certificate and the slice is located with
 * asn1js, rather than through @peculiar/x509, whose load time alone (~1 s) would dominate every CLI run.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import * as asn1js from 'asn1js';
import { p256PublicKey } from './ecdsa.js';
import { errorText } from './error-text.js';

export type SpkiSource = 'hex' | 'spki-pem' | 'spki-der' | 'certificate-pem' | 'certificate-der';

export type SpkiInput = {
  /** Exact SubjectPublicKeyInfo DER. */
  readonly spkiDer: Buffer;
  /** What the input turned out to be, for messages. */
  readonly source: SpkiSource;
};

export class SpkiInputError extends Error {
  constructor(
    readonly input: string,
    readonly why: string,
  ) {
    super(`cannot read a public key from ${input}: ${why}`);
    this.name = 'SpkiInputError';
  }
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;
// Hex as people paste it: optional 0x, any whitespace or colons between bytes.
const HEX_SEPARATORS = /[\s:]/g;
const HEX = /^[0-9a-fA-F]+$/;

/**
 * `arg` is a path to a file (PEM or DER, SPKI or certificate) or, when no such file exists, hex of a
 * DER SPKI or certificate. A file wins over hex so that a file name that happens to be hex still reads
 * the file.
 */
export function readSpkiInput(arg: string): SpkiInput {
  if (arg.trim() === '') throw new SpkiInputError('an empty argument', 'expected a file path or hex');
  if (isFile(arg)) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(arg);
    } catch (err) {
      throw new SpkiInputError(`file ${arg}`, errorText(err));
    }
    return parseSpkiBytes(bytes, `file ${arg}`);
  }
  const hex = arg.trim().replace(/^0x/i, '').replace(HEX_SEPARATORS, '');
  if (!HEX.test(hex)) {
    throw new SpkiInputError(
      JSON.stringify(shorten(arg)),
      'no such file, and not hex (expected a PEM/DER public key or certificate file, or hex of its DER)',
    );
  }
  if (hex.length % 2 !== 0) throw new SpkiInputError('hex input', 'odd number of hex digits');
  const parsed = parseDer(Buffer.from(hex, 'hex'), 'hex input');
  return { spkiDer: parsed.spkiDer, source: 'hex' };
}

/** Bytes of a file: PEM (PUBLIC KEY or CERTIFICATE, first block of those) or a single DER structure. */
export function parseSpkiBytes(bytes: Buffer, what = 'input'): SpkiInput {
  const text = bytes.toString('latin1');
  if (text.includes('-----BEGIN ')) return parsePem(text, what);
  const parsed = parseDer(bytes, what);
  return { spkiDer: parsed.spkiDer, source: parsed.kind === 'spki' ? 'spki-der' : 'certificate-der' };
}

/** Throws InvalidPublicKeyError unless the SPKI is an EC P-256 key: the only key type the gateway's
 *  agents use (their keys live in a TPM as P-256). */
export function assertP256Spki(spkiDer: Uint8Array): void {
  p256PublicKey(spkiDer);
}

export function spkiToPem(spkiDer: Uint8Array): string {
  const b64 = Buffer.from(spkiDer).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN PUBLIC KEY-----\n${lines.join('\n')}\n-----END PUBLIC KEY-----\n`;
}

/** SHA-256 of the SPKI DER, lowercase hex: how a key is named in messages and listings. */
export function spkiFingerprint(spkiDer: Uint8Array): string {
  return createHash('sha256').update(spkiDer).digest('hex');
}

function parsePem(text: string, what: string): SpkiInput {
  const blocks = [...text.matchAll(PEM_BLOCK)].map((m) => ({ label: m[1]!, body: m[2]! }));
  if (blocks.length === 0) throw new SpkiInputError(what, 'PEM header without a matching END line');
  // A certificate file may carry its chain after the leaf; the leaf comes first by convention.
  const usable = blocks.find((b) => b.label === 'PUBLIC KEY' || b.label === 'CERTIFICATE');
  if (usable === undefined) {
    const labels = blocks.map((b) => b.label).join(', ');
    const hint = /PRIVATE KEY/.test(labels)
      ? ' (this is a private key: give the public key or certificate)'
      : '';
    throw new SpkiInputError(what, `PEM holds ${labels}, expected PUBLIC KEY or CERTIFICATE${hint}`);
  }
  const der = Buffer.from(usable.body.replace(/\s+/g, ''), 'base64');
  const parsed = parseDer(der, what);
  if (usable.label === 'PUBLIC KEY' && parsed.kind !== 'spki') {
    throw new SpkiInputError(what, 'PUBLIC KEY block does not hold a SubjectPublicKeyInfo');
  }
  if (usable.label === 'CERTIFICATE' && parsed.kind !== 'certificate') {
    throw new SpkiInputError(what, 'CERTIFICATE block does not hold a certificate');
  }
  return { spkiDer: parsed.spkiDer, source: parsed.kind === 'spki' ? 'spki-pem' : 'certificate-pem' };
}

function parseDer(der: Buffer, what: string): { kind: 'spki' | 'certificate'; spkiDer: Buffer } {
  const view = new Uint8Array(der.buffer, der.byteOffset, der.byteLength);
  const parsed = asn1js.fromBER(view);
  if (parsed.offset === -1) throw new SpkiInputError(what, `not DER (${parsed.result.error})`);
  if (parsed.offset !== der.length) throw new SpkiInputError(what, 'trailing bytes after the DER structure');
  const top = parsed.result;
  if (!(top instanceof asn1js.Sequence) || top.valueBlock.value.length < 2) {
    throw new SpkiInputError(what, 'not a SubjectPublicKeyInfo or certificate (expected a SEQUENCE)');
  }
  // SPKI = SEQUENCE { AlgorithmIdentifier SEQUENCE { OID, ... }, BIT STRING }.
  // Certificate = SEQUENCE { TBSCertificate SEQUENCE { [0] version | INTEGER serial, ... }, ... }.
  const first = top.valueBlock.value[0];
  const firstOfFirst = first instanceof asn1js.Sequence ? first.valueBlock.value[0] : undefined;
  if (firstOfFirst instanceof asn1js.ObjectIdentifier) {
    if (!(top.valueBlock.value[1] instanceof asn1js.BitString) || top.valueBlock.value.length !== 2) {
      throw new SpkiInputError(what, 'malformed SubjectPublicKeyInfo');
    }
    return { kind: 'spki', spkiDer: Buffer.from(der) };
  }
  try {
    new X509Certificate(der);
  } catch (err) {
    throw new SpkiInputError(what, `neither a SubjectPublicKeyInfo nor a certificate (${errorText(err)})`);
  }
  // TBSCertificate: [0] version (absent in v1), serialNumber, signature, issuer, validity, subject,
  // subjectPublicKeyInfo, ...
  const tbsFields = first instanceof asn1js.Sequence ? first.valueBlock.value : [];
  const head = tbsFields[0];
  const hasVersion = head !== undefined && head.idBlock.tagClass === 3 && head.idBlock.tagNumber === 0;
  const spki = tbsFields[(hasVersion ? 1 : 0) + 5];
  if (!(spki instanceof asn1js.Sequence)) {
    throw new SpkiInputError(what, 'certificate has no subjectPublicKeyInfo where DER puts it');
  }
  return { kind: 'certificate', spkiDer: Buffer.from(spki.valueBeforeDecodeView) };
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function shorten(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
