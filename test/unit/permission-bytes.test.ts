// docs/contract.md "Signed bytes": the canonical signed bytes, byte for byte, and the timestamp form inside
// them.
import { createPrivateKey, createPublicKey, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { p256PublicKey, verifyDerSignature } from '../../core/ecdsa.js';
import { AmbiguousFieldError, canonicalPermissionBytes } from '../../core/permission-bytes.js';
import { formatTimestamp, InvalidTimestampError, microsToMs, parseTimestamp } from '../../core/timestamp.js';

const SPKI_HEX =
  '3059301306072a8648ce3d020106082a8648ce3d03010703420004f5e823027ecaa454c6bdf3af9c85f710b3c405a5fa915cc183838ced657a8d25dbd47025ac7962b41ff7e2bc5defb823c50dbca4eb8eecaecff296dd3f42129d';

// The private half of SPKI_HEX, and a signature over VECTOR made once with `openssl dgst -sha256 -sign`:
// a fixed regression vector for the whole sign/verify chain.
const PRIVATE_PEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8qoYvsSvXohSch/t
YDXDO2Nmji2nKGTGSSoQIhtgP2uhRANCAAT16CMCfsqkVMa986+chfcQs8QFpfqR
XMGDg4ztZXqNJdvUcCWseWK0H/fivF3vuCPFDbyk647srs/ylt0/QhKd
-----END PRIVATE KEY-----
`;
const OPENSSL_SIGNATURE_HEX =
  '3046022100974ad11a879ad29d433c54aa8e11a263780e16b085b9793d20ac9a11e4de1df3022100f5a8d82849b7af4e0ff15e2b827bb4da57a8ac5e7ee9a171205f4df926dc726c';

const VECTOR =
  'agent-gateway-permission-v1\n' +
  'permission_id=perm-1\n' +
  'signing_key_id=org-alice\n' +
  'subject_identity=agent-alpha\n' +
  'subject_public_key_spki_der=3059301306072a8648ce3d020106082a8648ce3d03010703420004f5e823027ecaa454c6bdf3af9c85f710b3c405a5fa915cc183838ced657a8d25dbd47025ac7962b41ff7e2bc5defb823c50dbca4eb8eecaecff296dd3f42129d\n' +
  'destination=api.example.com:443\n' +
  'not_before=2026-05-01T00:00:00.000000Z\n' +
  'not_after=2026-06-01T00:00:00.000000Z\n';

const FIELDS = {
  permissionId: 'perm-1',
  signingKeyId: 'org-alice',
  subjectIdentity: 'agent-alpha',
  subjectSpkiDer: Buffer.from(SPKI_HEX, 'hex'),
  destination: 'api.example.com:443',
  notBefore: parseTimestamp('2026-05-01T00:00:00.000000Z'),
  notAfter: parseTimestamp('2026-06-01T00:00:00.000000Z'),
};

describe('canonical permission bytes (docs/contract.md)', () => {
  it('match the fixed vector byte for byte', () => {
    const bytes = canonicalPermissionBytes(FIELDS);
    expect(bytes.toString('utf8')).toBe(VECTOR);
    expect(bytes.equals(Buffer.from(VECTOR, 'utf8'))).toBe(true);
    expect(bytes.at(-1)).toBe(0x0a);
  });

  it('verify against a signature made by the openssl CLI over the vector', () => {
    const key = p256PublicKey(Buffer.from(SPKI_HEX, 'hex'));
    const sig = Buffer.from(OPENSSL_SIGNATURE_HEX, 'hex');
    expect(verifyDerSignature(key, canonicalPermissionBytes(FIELDS), sig)).toBe(true);
    expect(
      verifyDerSignature(key, canonicalPermissionBytes({ ...FIELDS, permissionId: 'perm-2' }), sig),
    ).toBe(false);
    // The private key really is the one behind SPKI_HEX.
    const priv = createPrivateKey(PRIVATE_PEM);
    expect(createPublicKey(priv).export({ type: 'spki', format: 'der' }).toString('hex')).toBe(SPKI_HEX);
    const fresh = sign('sha256', Buffer.from(VECTOR), { key: priv, dsaEncoding: 'der' });
    expect(verifyDerSignature(key, Buffer.from(VECTOR), fresh)).toBe(true);
  });

  it.each([
    ['permission_id', { permissionId: 'perm\n1' }],
    ['signing_key_id', { signingKeyId: 'org\nsubject_identity=x' }],
    ['subject_identity', { subjectIdentity: 'agent\r' }],
    ['destination', { destination: 'a.example:443\u0000' }],
  ])('refuses a %s with a control character', (field, patch) => {
    expect(() => canonicalPermissionBytes({ ...FIELDS, ...patch })).toThrow(AmbiguousFieldError);
    expect(() => canonicalPermissionBytes({ ...FIELDS, ...patch })).toThrow(field);
  });

  it('refuses an unpaired surrogate (no UTF-8 form) and keeps a paired one', () => {
    for (const field of ['perm\ud800', 'perm\udc00x']) {
      expect(() => canonicalPermissionBytes({ ...FIELDS, permissionId: field })).toThrow(
        new AmbiguousFieldError(
          'permission_id',
          field,
          'contains an unpaired UTF-16 surrogate (not Unicode text)',
        ),
      );
    }
    const text = canonicalPermissionBytes({ ...FIELDS, subjectIdentity: 'agent-\u{1f916}' }).toString('utf8');
    expect(text).toContain('\nsubject_identity=agent-\u{1f916}\n');
  });

  it('names the field and why in its error', () => {
    const err = new AmbiguousFieldError('destination', 'a\n');
    expect([err.name, err.message]).toEqual([
      'AmbiguousFieldError',
      'destination "a\\n" contains a control character (such as a newline): it would make the signed text ambiguous',
    ]);
  });

  it('keeps "=" in a value (each line splits at its first "=")', () => {
    const text = canonicalPermissionBytes({ ...FIELDS, permissionId: 'a=b' }).toString();
    expect(text).toContain('\npermission_id=a=b\n');
  });
});

describe('timestamps at microsecond precision', () => {
  it.each([
    '2026-05-01T00:00:00.000000Z',
    '2026-05-01T00:00:00.000001Z',
    '2026-05-01T00:00:00.999999Z',
    '2026-05-01T23:59:59.999999Z',
    '2026-05-01T12:34:56.123456Z',
    '1970-01-01T00:00:00.000000Z',
    '1969-12-31T23:59:59.999999Z',
    '2000-02-29T00:00:00.500000Z',
    '9999-12-31T23:59:59.999999Z',
    // Years below 100 too: the first and last instants formatTimestamp writes both parse back.
    '0000-01-01T00:00:00.000000Z',
    '0099-12-31T23:59:59.999999Z',
  ])('%s round-trips', (text) => {
    expect(formatTimestamp(parseTimestamp(text))).toBe(text);
  });

  it('is exact to the microsecond', () => {
    const base = parseTimestamp('2026-05-01T00:00:00.000000Z');
    expect(parseTimestamp('2026-05-01T00:00:00.000001Z') - base).toBe(1n);
    expect(parseTimestamp('2026-05-01T00:00:00.999999Z') - base).toBe(999_999n);
    expect(parseTimestamp('2026-05-01T00:00:01.000000Z') - base).toBe(1_000_000n);
    expect(formatTimestamp(base + 1n)).toBe('2026-05-01T00:00:00.000001Z');
    expect(base).toBe(BigInt(Date.UTC(2026, 4, 1)) * 1000n);
  });

  it.each([
    '2026-05-01T00:00:00Z',
    '2026-05-01T00:00:00.123Z',
    '2026-05-01T00:00:00.1234567Z',
    '2026-05-01T00:00:00.000000+00:00',
    '2026-05-01 00:00:00.000000Z',
    '2026-05-01T00:00:00.000000z',
    '2026-02-30T00:00:00.000000Z',
    '2026-13-01T00:00:00.000000Z',
    '2026-00-10T00:00:00.000000Z',
    '2026-05-01T00:60:00.000000Z',
    '2026-05-01T24:00:00.000000Z',
    '2026-05-01T00:00:60.000000Z',
    'x2026-05-01T00:00:00.000000Z',
    '2026-05-01T00:00:00.000000Zx',
    '2026-05-01T00:00:00.000000Z\n',
    '',
  ])('refuses %j', (text) => {
    expect(() => parseTimestamp(text)).toThrow(
      new InvalidTimestampError(text, 'expected YYYY-MM-DDTHH:MM:SS.ffffffZ'),
    );
    expect(() => parseTimestamp(text)).toThrow(`invalid timestamp ${JSON.stringify(text)}: expected`);
  });

  // Microseconds → text at both ends of the years 0000..9999 and one microsecond past them.
  const RANGE: readonly (readonly [bigint, string | null])[] = [
    [-62_167_219_200_000_000n, '0000-01-01T00:00:00.000000Z'],
    [-62_167_219_200_000_001n, null],
    [253_402_300_799_999_999n, '9999-12-31T23:59:59.999999Z'],
    [253_402_300_800_000_000n, null],
    [-1n, '1969-12-31T23:59:59.999999Z'],
    [-1_000_001n, '1969-12-31T23:59:58.999999Z'],
  ];
  it.each(RANGE)('formats %s as %s', (micros, text) => {
    if (text === null) {
      expect(() => formatTimestamp(micros)).toThrow(
        new InvalidTimestampError(String(micros), 'microseconds outside the years 0000..9999'),
      );
    } else {
      expect(formatTimestamp(micros)).toBe(text);
      expect(parseTimestamp(text)).toBe(micros);
    }
  });

  it('microsToMs truncates to whole milliseconds', () => {
    expect([microsToMs(1_999n), microsToMs(2_000n), microsToMs(1_778_414_400_000_123n)]).toEqual([
      1, 2, 1_778_414_400_000,
    ]);
  });
});
