// core/spki-input.ts without files: the hex spellings admins paste, the DER and PEM shapes it accepts, and
// the exact refusal for each shape it does not (registry-cli-keys.test.ts reads the files).
import { generateKeyPairSync, X509Certificate as NodeX509 } from 'node:crypto';
import * as asn1js from 'asn1js';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseSpkiBytes, readSpkiInput, SpkiInputError, spkiToPem } from '../../core/spki-input.js';
import { createCarrier } from '../../dev-support/pki.js';

const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({
  type: 'spki',
  format: 'der',
});
const hex = spki.toString('hex');
const der = (...value: asn1js.AsnType[]) => Buffer.from(new asn1js.Sequence({ value }).toBER(false));
const oid = () => new asn1js.ObjectIdentifier({ value: '1.2.840.10045.2.1' });
const pem = (label: string, body: Buffer) =>
  `-----BEGIN ${label}-----\n${body.toString('base64')}\n-----END ${label}-----\n`;

const NOT_HEX =
  'no such file, and not hex (expected a PEM/DER public key or certificate file, or hex of its DER)';
const refusal = (input: string, why: string) => `cannot read a public key from ${input}: ${why}`;

describe('readSpkiInput from hex', () => {
  it.each([
    ['plain', hex],
    ['0x and upper case', `0X${hex.toUpperCase()}`],
    ['colons between bytes', hex.match(/../g)!.join(':')],
    [
      'spaces, newlines and surrounding whitespace',
      `  0x${hex.slice(0, 20)} ${hex.slice(20, 60)}\n${hex.slice(60)}  `,
    ],
  ])('%s', (_name, input) => {
    expect(readSpkiInput(input)).toEqual({ spkiDer: spki, source: 'hex' });
  });

  const SEQ_OF_ONE = der(new asn1js.Integer({ value: 1 })).toString('hex');
  const REFUSED: readonly (readonly [string, string])[] = [
    ['', refusal('an empty argument', 'expected a file path or hex')],
    ['   ', refusal('an empty argument', 'expected a file path or hex')],
    ['zz', refusal('"zz"', NOT_HEX)],
    ['zz12', refusal('"zz12"', NOT_HEX)],
    ['12zz', refusal('"12zz"', NOT_HEX)],
    ['ab0xcd', refusal('"ab0xcd"', NOT_HEX)],
    [`g${'a'.repeat(80)}`, refusal(JSON.stringify(`g${'a'.repeat(76)}...`), NOT_HEX)],
    [`g${'a'.repeat(79)}`, refusal(JSON.stringify(`g${'a'.repeat(79)}`), NOT_HEX)],
    ['abc', refusal('hex input', 'odd number of hex digits')],
    [`${hex}00`, refusal('hex input', 'trailing bytes after the DER structure')],
    ['0500', refusal('hex input', 'not a SubjectPublicKeyInfo or certificate (expected a SEQUENCE)')],
    ['3000', refusal('hex input', 'not a SubjectPublicKeyInfo or certificate (expected a SEQUENCE)')],
    [SEQ_OF_ONE, refusal('hex input', 'not a SubjectPublicKeyInfo or certificate (expected a SEQUENCE)')],
  ];
  it.each(REFUSED)('refuses %j', (input, message) => {
    expect(() => readSpkiInput(input)).toThrow(expect.objectContaining({ name: 'SpkiInputError', message }));
  });

  it('says what is not DER', () => {
    expect(() => readSpkiInput('30')).toThrow(/^cannot read a public key from hex input: not DER \(.+\)$/);
  });
});

describe('parseSpkiBytes', () => {
  let certDer: Buffer;
  let certSpki: Buffer;
  beforeAll(async () => {
    const carrier = await createCarrier('agent-alpha');
    certDer = new NodeX509(carrier.certPem).raw;
    certSpki = carrier.spkiDer;
  });

  it('reads each form and names it', () => {
    expect(parseSpkiBytes(spki)).toEqual({ spkiDer: spki, source: 'spki-der' });
    expect(parseSpkiBytes(Buffer.from(spkiToPem(spki)))).toEqual({ spkiDer: spki, source: 'spki-pem' });
    expect(parseSpkiBytes(certDer)).toEqual({ spkiDer: certSpki, source: 'certificate-der' });
    expect(parseSpkiBytes(Buffer.from(pem('CERTIFICATE', certDer)))).toEqual({
      spkiDer: certSpki,
      source: 'certificate-pem',
    });
  });

  it('writes PEM in 64-character lines', () => {
    const b64 = spki.toString('base64');
    expect(spkiToPem(spki)).toBe(
      `-----BEGIN PUBLIC KEY-----\n${b64.slice(0, 64)}\n${b64.slice(64)}\n-----END PUBLIC KEY-----\n`,
    );
  });

  const malformedSpki = (...rest: asn1js.AsnType[]) => der(new asn1js.Sequence({ value: [oid()] }), ...rest);
  const REFUSED: readonly (readonly [string, () => Buffer, string])[] = [
    [
      'an SPKI whose key is not a BIT STRING',
      () => malformedSpki(new asn1js.Integer({ value: 1 })),
      'malformed SubjectPublicKeyInfo',
    ],
    [
      'an SPKI with a third field',
      () =>
        malformedSpki(new asn1js.BitString({ valueHex: new Uint8Array([4, 1]).buffer }), new asn1js.Null()),
      'malformed SubjectPublicKeyInfo',
    ],
    [
      'a PEM header without its END line',
      () => Buffer.from(`-----BEGIN PUBLIC KEY-----\n${spki.toString('base64')}\n`),
      'PEM header without a matching END line',
    ],
    [
      'a private key',
      () => Buffer.from(pem('PRIVATE KEY', Buffer.from([0x30, 0]))),
      'PEM holds PRIVATE KEY, expected PUBLIC KEY or CERTIFICATE (this is a private key: give the public key or certificate)',
    ],
    [
      'other blocks',
      () => Buffer.from(pem('EC PARAMETERS', Buffer.from([6, 0])) + pem('X509 CRL', Buffer.from([0x30, 0]))),
      'PEM holds EC PARAMETERS, X509 CRL, expected PUBLIC KEY or CERTIFICATE',
    ],
    [
      'a certificate in a PUBLIC KEY block',
      () => Buffer.from(pem('PUBLIC KEY', certDer)),
      'PUBLIC KEY block does not hold a SubjectPublicKeyInfo',
    ],
    [
      'an SPKI in a CERTIFICATE block',
      () => Buffer.from(pem('CERTIFICATE', spki)),
      'CERTIFICATE block does not hold a certificate',
    ],
  ];
  it.each(REFUSED)('refuses %s', (_name, bytes, why) => {
    expect(() => parseSpkiBytes(bytes(), 'the input')).toThrow(new SpkiInputError('the input', why));
  });

  it('refuses a SEQUENCE that is neither, naming why the certificate parse failed', () => {
    const neither = der(
      new asn1js.Sequence({ value: [new asn1js.Integer({ value: 1 })] }),
      new asn1js.Integer({ value: 2 }),
    );
    expect(() => parseSpkiBytes(neither)).toThrow(
      /^cannot read a public key from input: neither a SubjectPublicKeyInfo nor a certificate \(.+\)$/,
    );
  });
});
