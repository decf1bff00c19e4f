// docs/contract.md "Root-signed bytes": the canonical bytes a root key signs for a principal key row and
// a scope row, byte for byte, with signatures made once by the openssl CLI (fixed regression vectors).
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { p256PublicKey, verifyDerSignature } from '../../core/ecdsa.js';
import { AmbiguousFieldError } from '../../core/permission-bytes.js';
import {
  canonicalPrincipalKeyBytes,
  canonicalScopeBytes,
  PRINCIPAL_KEY_FORMAT_V1,
  PRINCIPAL_SCOPE_FORMAT_V1,
  rootKeyId,
} from '../../core/root-signed-bytes.js';
import { parseTimestamp } from '../../core/timestamp.js';

const ROOT_PRIVATE_PEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeWqUfFEAQQdo+GBy
AltpJsj2cfPH0B6SaMOwYdqBpSuhRANCAAQjq0vVeHUkdOZBYGrigLewrEGAQgpj
U0ceFKMhi6LK9gF5eiwhtypEOfB/yOT8woLHWCuqp1NbY9aJYn5Fyt9C
-----END PRIVATE KEY-----
`;
const ROOT_SPKI_B64 =
  'MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEI6tL1Xh1JHTmQWBq4oC3sKxBgEIKY1NHHhSjIYuiyvYBeXosIbcqRDnwf8jk/MKCx1grqqdTW2PWiWJ+RcrfQg==';
const ROOT_KEY_ID = 'sha256:cc814ea65acda8c70dbc41c43df35e8d18ce90e25fb92b934d90ef138ad95c49';

const PRINCIPAL_SPKI_HEX =
  '3059301306072a8648ce3d020106082a8648ce3d03010703420004f5e823027ecaa454c6bdf3af9c85f710b3c405a5fa915cc183838ced657a8d25dbd47025ac7962b41ff7e2bc5defb823c50dbca4eb8eecaecff296dd3f42129d';

const KEY_VECTOR =
  'agent-gateway-principal-key-v1\n' +
  'key_id=org-alice\n' +
  'algorithm=ecdsa_p256_sha256\n' +
  `public_key_spki_der=${PRINCIPAL_SPKI_HEX}\n` +
  'not_before=2026-01-01T00:00:00.000000Z\n' +
  'not_after=2027-01-01T00:00:00.000000Z\n';
const KEY_SHA256 = 'd92259f6853936d491d5e000f93c873a316e9839ce37f8832626e47324dbf76c';
const KEY_SIGNATURE_HEX =
  '3046022100b4efc0db561365c36beb29254fea4cd8ea01292c48b207f2466b5b7acc478243022100e27bdc695df10de482bda9dbade41740663b42d66d1dc15ebeb5df139c09de08';

const SCOPE_VECTOR =
  'agent-gateway-principal-scope-v1\n' +
  'signing_key_id=org-alice\n' +
  'signing_key_spki_sha256=a619ef72daaeee6408b89eb6a7734fc012101dbcb2cbb85b0dfc42c65af36c4e\n' +
  'destination=api.example.com:443\n' +
  'not_before=2026-03-01T00:00:00.000000Z\n' +
  'not_after=2026-09-01T00:00:00.000000Z\n';
const SCOPE_SHA256 = 'a2bde23a29c30ab3863f740f4b573bfd38aa5aef6e79f70e2f0685dcc0a8d13b';
const SCOPE_SIGNATURE_HEX =
  '3046022100e89824a9663662cf84cb1b7d0da4b453fd1b4ea372d3aaa8e16225ad6c4fa32a0221008a869f320946a073fc4f1ed5621ac1bde9d38b365f12f58ecf06ea916ee66f0b';

const KEY_FIELDS = {
  keyId: 'org-alice',
  algorithm: 'ecdsa_p256_sha256',
  spkiDer: Buffer.from(PRINCIPAL_SPKI_HEX, 'hex'),
  notBefore: parseTimestamp('2026-01-01T00:00:00.000000Z'),
  notAfter: parseTimestamp('2027-01-01T00:00:00.000000Z'),
};
const SCOPE_FIELDS = {
  signingKeyId: 'org-alice',
  signingKeySpkiDer: Buffer.from(PRINCIPAL_SPKI_HEX, 'hex'),
  destination: 'api.example.com:443',
  notBefore: parseTimestamp('2026-03-01T00:00:00.000000Z'),
  notAfter: parseTimestamp('2026-09-01T00:00:00.000000Z'),
};

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const rootKey = () => p256PublicKey(Buffer.from(ROOT_SPKI_B64, 'base64'));

describe('root key id (docs/contract.md "Root of trust")', () => {
  it('is sha256: and the lowercase hex SHA-256 of the SPKI DER', () => {
    const spki = Buffer.from(ROOT_SPKI_B64, 'base64');
    expect(rootKeyId(spki)).toBe(ROOT_KEY_ID);
    expect(rootKeyId(spki)).toMatch(/^sha256:[0-9a-f]{64}$/);
    const other = Buffer.from(PRINCIPAL_SPKI_HEX, 'hex');
    expect(rootKeyId(other)).not.toBe(ROOT_KEY_ID);
  });

  it('belongs to the fixed private key', () => {
    const spki = createPublicKey(createPrivateKey(ROOT_PRIVATE_PEM)).export({ type: 'spki', format: 'der' });
    expect(spki.toString('base64')).toBe(ROOT_SPKI_B64);
  });
});

describe('canonical principal key bytes', () => {
  it('match the fixed vector byte for byte, and its SHA-256', () => {
    const bytes = canonicalPrincipalKeyBytes(KEY_FIELDS);
    expect(bytes.toString('utf8')).toBe(KEY_VECTOR);
    expect(sha256(bytes)).toBe(KEY_SHA256);
    expect(bytes.toString('utf8').split('\n')[0]).toBe(PRINCIPAL_KEY_FORMAT_V1);
  });

  it('verify against the openssl signature by the root, and only for these fields', () => {
    const sig = Buffer.from(KEY_SIGNATURE_HEX, 'hex');
    expect(verifyDerSignature(rootKey(), canonicalPrincipalKeyBytes(KEY_FIELDS), sig)).toBe(true);
    for (const patch of [
      { keyId: 'org-mallory' },
      { spkiDer: Buffer.from(ROOT_SPKI_B64, 'base64') },
      { notBefore: KEY_FIELDS.notBefore - 1n },
      { notAfter: KEY_FIELDS.notAfter + 1n },
    ]) {
      const bytes = canonicalPrincipalKeyBytes({ ...KEY_FIELDS, ...patch });
      expect(verifyDerSignature(rootKey(), bytes, sig)).toBe(false);
    }
  });

  it.each([
    ['key_id', { keyId: 'org\nalgorithm=x' }],
    ['algorithm', { algorithm: 'ecdsa\r' }],
  ])('refuses a %s with a control character', (field, patch) => {
    expect(() => canonicalPrincipalKeyBytes({ ...KEY_FIELDS, ...patch })).toThrow(AmbiguousFieldError);
    expect(() => canonicalPrincipalKeyBytes({ ...KEY_FIELDS, ...patch })).toThrow(field);
  });
});

describe('canonical scope bytes', () => {
  it('match the fixed vector byte for byte, and its SHA-256', () => {
    const bytes = canonicalScopeBytes(SCOPE_FIELDS);
    expect(bytes.toString('utf8')).toBe(SCOPE_VECTOR);
    expect(sha256(bytes)).toBe(SCOPE_SHA256);
    expect(bytes.toString('utf8').split('\n')[0]).toBe(PRINCIPAL_SCOPE_FORMAT_V1);
  });

  it('verify against the openssl signature by the root, and only for these fields', () => {
    const sig = Buffer.from(SCOPE_SIGNATURE_HEX, 'hex');
    expect(verifyDerSignature(rootKey(), canonicalScopeBytes(SCOPE_FIELDS), sig)).toBe(true);
    for (const patch of [
      { signingKeyId: 'org-mallory' },
      { signingKeySpkiDer: Buffer.from(ROOT_SPKI_B64, 'base64') },
      { destination: 'api.example.com:8443' },
      { notBefore: SCOPE_FIELDS.notBefore - 1n },
      { notAfter: SCOPE_FIELDS.notAfter + 1n },
    ]) {
      const bytes = canonicalScopeBytes({ ...SCOPE_FIELDS, ...patch });
      expect(verifyDerSignature(rootKey(), bytes, sig)).toBe(false);
    }
  });

  it('a key signature is never a scope signature (distinct purpose lines)', () => {
    const keySig = Buffer.from(KEY_SIGNATURE_HEX, 'hex');
    expect(verifyDerSignature(rootKey(), canonicalScopeBytes(SCOPE_FIELDS), keySig)).toBe(false);
    expect(PRINCIPAL_KEY_FORMAT_V1).not.toBe(PRINCIPAL_SCOPE_FORMAT_V1);
  });

  it.each([
    ['signing_key_id', { signingKeyId: 'org\ndestination=x' }],
    ['destination', { destination: 'a.example:443\u0000' }],
  ])('refuses a %s with a control character', (field, patch) => {
    expect(() => canonicalScopeBytes({ ...SCOPE_FIELDS, ...patch })).toThrow(AmbiguousFieldError);
    expect(() => canonicalScopeBytes({ ...SCOPE_FIELDS, ...patch })).toThrow(field);
  });
});
