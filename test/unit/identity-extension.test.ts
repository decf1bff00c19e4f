// docs/contract.md "Identity": the first extension at the configured OID, exactly one DER UTF8String, matched
// byte for byte; plus the leaf's exact SPKI DER. Certificates are generated with core/x509.ts.
import { webcrypto } from 'node:crypto';
import * as asn1js from 'asn1js';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_IDENTITY_OID,
  encodeIdentityExtensionValue,
  identityExtension,
  readPeerIdentity,
} from '../../core/identity-extension.js';
import { x509 } from '../../core/x509.js';

const OID = DEFAULT_IDENTITY_OID;
type Keys = Awaited<ReturnType<typeof webcrypto.subtle.generateKey>> & {
  publicKey: unknown;
  privateKey: unknown;
};

let keys: Keys;
beforeAll(async () => {
  keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as Keys;
});

async function cert(extensions: x509.Extension[]): Promise<Buffer> {
  const c = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=carrier',
    notBefore: new Date('2026-01-01T00:00:00Z'),
    notAfter: new Date('2027-01-01T00:00:00Z'),
    keys: keys as unknown as CryptoKeyPairLike,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions,
  });
  return Buffer.from(c.rawData);
}
type CryptoKeyPairLike = Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[0]['keys'];

const raw = (value: ArrayBuffer | Uint8Array, oid = OID) =>
  new x509.Extension(oid, false, value instanceof Uint8Array ? new Uint8Array(value).buffer : value);
const ber = (v: asn1js.BaseBlock) => v.toBER(false);

type Row = readonly [
  name: string,
  extensions: () => x509.Extension[],
  expected: string | { reason: string; detail?: RegExp },
];

const ROWS: readonly Row[] = [
  ['UTF8String identity', () => [identityExtension('agent-alpha')], 'agent-alpha'],
  ['non-ASCII identity kept byte-exact', () => [identityExtension('agënt-ß')], 'agënt-ß'],
  ['identity case preserved', () => [identityExtension('Agent-Alpha')], 'Agent-Alpha'],
  [
    'first extension wins when duplicated',
    () => [identityExtension('first'), identityExtension('second')],
    'first',
  ],
  [
    'other extensions ignored',
    () => [raw(ber(new asn1js.Utf8String({ value: 'x' })), '1.2.3.4'), identityExtension('a')],
    'a',
  ],
  ['missing extension', () => [], { reason: 'missing_identity_extension' }],
  [
    'extension at another OID only',
    () => [identityExtension('agent-alpha', '1.3.6.1.4.1.57264.1.2')],
    { reason: 'missing_identity_extension' },
  ],
  [
    'PrintableString instead of UTF8String',
    () => [raw(ber(new asn1js.PrintableString({ value: 'agent-alpha' })))],
    { reason: 'invalid_identity_extension', detail: /expected UTF8String/ },
  ],
  [
    'IA5String instead of UTF8String',
    () => [raw(ber(new asn1js.IA5String({ value: 'agent-alpha' })))],
    { reason: 'invalid_identity_extension', detail: /expected UTF8String/ },
  ],
  [
    'OCTET STRING instead of UTF8String',
    () => [raw(ber(new asn1js.OctetString({ valueHex: Buffer.from('agent-alpha') })))],
    { reason: 'invalid_identity_extension', detail: /expected UTF8String/ },
  ],
  [
    'SEQUENCE wrapping a UTF8String',
    () => [raw(ber(new asn1js.Sequence({ value: [new asn1js.Utf8String({ value: 'agent-alpha' })] })))],
    { reason: 'invalid_identity_extension', detail: /expected UTF8String/ },
  ],
  [
    'trailing bytes after the UTF8String',
    () => [
      raw(Buffer.concat([Buffer.from(encodeIdentityExtensionValue('agent-alpha')), Buffer.from([0x00])])),
    ],
    { reason: 'invalid_identity_extension', detail: /trailing bytes/ },
  ],
  [
    'two UTF8Strings back to back',
    () => [
      raw(
        Buffer.concat([
          Buffer.from(encodeIdentityExtensionValue('a')),
          Buffer.from(encodeIdentityExtensionValue('b')),
        ]),
      ),
    ],
    { reason: 'invalid_identity_extension', detail: /trailing bytes/ },
  ],
  [
    'empty UTF8String',
    () => [raw(Buffer.from([0x0c, 0x00]))],
    { reason: 'invalid_identity_extension', detail: /empty/ },
  ],
  ['identity of exactly 256 bytes', () => [identityExtension('ß'.repeat(128))], 'ß'.repeat(128)],
  [
    'identity over 256 bytes (257 in UTF-8)',
    () => [identityExtension(`${'ß'.repeat(128)}a`)],
    { reason: 'invalid_identity_extension', detail: /257 bytes, longer than 256/ },
  ],
  [
    'identity with a NUL (PostgreSQL cannot even take it as a parameter)',
    () => [identityExtension('agent\u0000alpha')],
    { reason: 'invalid_identity_extension', detail: /control character/ },
  ],
  [
    'identity with a newline',
    () => [identityExtension('agent\nalpha')],
    { reason: 'invalid_identity_extension', detail: /control character/ },
  ],
  ['empty extension value', () => [raw(Buffer.alloc(0))], { reason: 'invalid_identity_extension' }],
  ['bare text, not DER', () => [raw(Buffer.from('agent-alpha'))], { reason: 'invalid_identity_extension' }],
  [
    'UTF8String with invalid UTF-8',
    () => [raw(Buffer.from([0x0c, 0x02, 0xc3, 0x28]))],
    { reason: 'invalid_identity_extension', detail: /UTF-8/ },
  ],
  [
    'truncated length',
    () => [raw(Buffer.from([0x0c, 0x05, 0x61]))],
    { reason: 'invalid_identity_extension' },
  ],
  [
    'first extension wins even when it is invalid',
    () => [raw(ber(new asn1js.PrintableString({ value: 'bad' }))), identityExtension('good')],
    { reason: 'invalid_identity_extension' },
  ],
];

describe('readPeerIdentity (generated certificates)', () => {
  it.each(ROWS)('%s', async (_name, extensions, expected) => {
    const der = await cert(extensions());
    const r = readPeerIdentity(der, OID);
    if (typeof expected === 'string') {
      expect(r.ok).toBe(true);
      if (r.ok) {
        expect(r.peer.identity).toBe(expected);
        const spki = Buffer.from(
          await webcrypto.subtle.exportKey('spki', keys.publicKey as webcrypto.CryptoKey),
        );
        expect(r.peer.spkiDer.equals(spki)).toBe(true);
      }
    } else {
      expect(r.ok).toBe(false);
      if (!r.ok) {
        expect(r.reason).toBe(expected.reason);
        if (expected.detail) expect(r.detail).toMatch(expected.detail);
      }
    }
  });

  it('no certificate and an unparsable certificate', () => {
    expect(readPeerIdentity(undefined, OID)).toMatchObject({
      ok: false,
      reason: 'missing_client_certificate',
    });
    expect(readPeerIdentity(Buffer.alloc(0), OID)).toMatchObject({
      ok: false,
      reason: 'missing_client_certificate',
    });
    expect(readPeerIdentity(Buffer.from('not a certificate'), OID)).toMatchObject({
      ok: false,
      reason: 'invalid_client_certificate',
    });
  });

  it('honours the configured OID', async () => {
    const der = await cert([identityExtension('agent-alpha', '1.2.3.4.5')]);
    expect(readPeerIdentity(der, '1.2.3.4.5')).toMatchObject({ ok: true, peer: { identity: 'agent-alpha' } });
    expect(readPeerIdentity(der, OID)).toMatchObject({ ok: false, reason: 'missing_identity_extension' });
  });
});
