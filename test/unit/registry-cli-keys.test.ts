// Reading an agent's public key in every form admins have it (core/spki-input.ts), the P-256 check, and the
// PKCS#11 EC point → SPKI conversion: registry CLI pieces that need neither a TPM nor a database. Argument,
// environment and exit code checks are in registry-cli-args.test.ts.
import { createPublicKey, generateKeyPairSync, webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as asn1js from 'asn1js';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidPublicKeyError } from '../../core/ecdsa.js';
import { DEFAULT_IDENTITY_OID, identityExtension, readPeerIdentity } from '../../core/identity-extension.js';
import {
  assertP256Spki,
  parseSpkiBytes,
  readSpkiInput,
  SpkiInputError,
  spkiFingerprint,
  spkiToPem,
} from '../../core/spki-input.js';
import { x509 } from '../../core/x509.js';
import { ecPointToSpki } from '../../pkcs11/ec-point.js';
import { SignerError } from '../../pkcs11/signer-error.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'agw-cli-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function p256(): { spkiDer: Buffer; privatePem: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    spkiDer: publicKey.export({ type: 'spki', format: 'der' }),
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

async function selfSignedCert(
  extensions: x509.Extension[] = [],
): Promise<{ cert: x509.X509Certificate; spkiDer: Buffer }> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=agent-alpha',
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: alg,
    extensions,
    keys: keys as unknown as Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[0]['keys'],
  });
  const spkiDer = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
  return { cert, spkiDer };
}

function file(name: string, content: string | Buffer): string {
  const p = path.join(dir, name);
  writeFileSync(p, content);
  return p;
}

describe('readSpkiInput', () => {
  const key = p256();
  const pem = spkiToPem(key.spkiDer);

  it('reads a PEM SubjectPublicKeyInfo file byte for byte', () => {
    const r = readSpkiInput(file('spki.pem', pem));
    expect(r.source).toBe('spki-pem');
    expect(r.spkiDer.equals(key.spkiDer)).toBe(true);
  });

  it('writes PEM that OpenSSL-compatible parsers read back to the same key', () => {
    const back = createPublicKey(pem).export({ type: 'spki', format: 'der' });
    expect(back.equals(key.spkiDer)).toBe(true);
  });

  it('reads a DER SubjectPublicKeyInfo file', () => {
    const r = readSpkiInput(file('spki.der', key.spkiDer));
    expect(r.source).toBe('spki-der');
    expect(r.spkiDer.equals(key.spkiDer)).toBe(true);
  });

  it('reads the subject key of a PEM certificate, and of the first one in a chain', async () => {
    const leaf = await selfSignedCert();
    const other = await selfSignedCert();
    const single = readSpkiInput(file('cert.pem', leaf.cert.toString('pem')));
    expect(single.source).toBe('certificate-pem');
    expect(single.spkiDer.equals(leaf.spkiDer)).toBe(true);
    const chain = readSpkiInput(
      file('chain.pem', `${leaf.cert.toString('pem')}\n${other.cert.toString('pem')}\n`),
    );
    expect(chain.spkiDer.equals(leaf.spkiDer)).toBe(true);
  });

  it('reads the subject key of a DER certificate, from a file or as hex', async () => {
    const leaf = await selfSignedCert();
    const der = Buffer.from(leaf.cert.rawData);
    const fromFile = readSpkiInput(file('cert.der', der));
    expect(fromFile.source).toBe('certificate-der');
    expect(fromFile.spkiDer.equals(leaf.spkiDer)).toBe(true);
    expect(readSpkiInput(der.toString('hex')).spkiDer.equals(leaf.spkiDer)).toBe(true);
  });

  it('reads from a carrier certificate exactly the SPKI the gateway sees in the TLS handshake', async () => {
    const leaf = await selfSignedCert([identityExtension('agent-alpha')]);
    const gatewayView = readPeerIdentity(new Uint8Array(leaf.cert.rawData), DEFAULT_IDENTITY_OID);
    expect(gatewayView.ok).toBe(true);
    if (!gatewayView.ok) return;
    const ours = readSpkiInput(file('carrier.pem', leaf.cert.toString('pem'))).spkiDer;
    expect(ours.equals(gatewayView.peer.spkiDer)).toBe(true);
  });

  it('reads hex as people paste it: upper case, 0x prefix, colons, spaces', () => {
    const hex = key.spkiDer.toString('hex');
    for (const form of [
      hex,
      hex.toUpperCase(),
      `0x${hex}`,
      hex.match(/../g)!.join(':'),
      ` ${hex.slice(0, 20)} ${hex.slice(20)}\n`,
    ]) {
      const r = readSpkiInput(form);
      expect(r.source).toBe('hex');
      expect(r.spkiDer.equals(key.spkiDer)).toBe(true);
    }
  });

  it('prefers an existing file over reading its name as hex', () => {
    const other = p256();
    const name = path.join(dir, 'abcdef');
    writeFileSync(name, spkiToPem(other.spkiDer));
    expect(readSpkiInput(name).spkiDer.equals(other.spkiDer)).toBe(true);
  });

  it.each([
    ['an empty argument', ''],
    ['a missing file that is not hex', path.join(dir, 'no-such-file.pem')],
    ['odd-length hex', 'abc'],
    ['hex that is not DER', 'deadbeef'],
  ])('refuses %s', (_name, input) => {
    expect(() => readSpkiInput(input)).toThrow(SpkiInputError);
  });

  it('refuses a private key file without echoing it, naming what it is', () => {
    const f = file('agent.key', key.privatePem);
    expect(() => readSpkiInput(f)).toThrow(/private key/);
    try {
      readSpkiInput(f);
    } catch (err) {
      expect((err as Error).message).not.toContain(key.privatePem.split('\n')[1]!);
    }
  });

  it('refuses trailing bytes after the DER structure', () => {
    expect(() => parseSpkiBytes(Buffer.concat([key.spkiDer, Buffer.from([0])]))).toThrow(/trailing bytes/);
  });

  it('refuses a PEM block whose label does not match its content', () => {
    const bad = `-----BEGIN CERTIFICATE-----\n${key.spkiDer.toString('base64')}\n-----END CERTIFICATE-----\n`;
    expect(() => parseSpkiBytes(Buffer.from(bad))).toThrow(/does not hold a certificate/);
  });

  it('fingerprints the exact DER', () => {
    expect(spkiFingerprint(key.spkiDer)).toMatch(/^[0-9a-f]{64}$/);
    expect(spkiFingerprint(key.spkiDer)).not.toBe(spkiFingerprint(p256().spkiDer));
  });
});

describe('assertP256Spki', () => {
  it('accepts P-256', () => {
    expect(() => assertP256Spki(p256().spkiDer)).not.toThrow();
  });

  it.each([
    ['P-384', () => generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey],
    ['RSA', () => generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey],
    ['Ed25519', () => generateKeyPairSync('ed25519').publicKey],
  ])('refuses %s', (_name, make) => {
    const spki = make().export({ type: 'spki', format: 'der' });
    // It reads fine as an SPKI; the key type is what makes the grant useless.
    expect(readSpkiInput(spki.toString('hex')).spkiDer.equals(spki)).toBe(true);
    expect(() => assertP256Spki(spki)).toThrow(InvalidPublicKeyError);
  });
});

describe('ecPointToSpki (PKCS#11 CKA_EC_PARAMS + CKA_EC_POINT)', () => {
  const p256Oid = Buffer.from(new asn1js.ObjectIdentifier({ value: '1.2.840.10045.3.1.7' }).toBER(false));
  const key = p256();
  const jwk = createPublicKey({ key: key.spkiDer, format: 'der', type: 'spki' }).export({ format: 'jwk' });
  const point = Buffer.concat([
    Buffer.from([4]),
    Buffer.from(jwk.x as string, 'base64url'),
    Buffer.from(jwk.y as string, 'base64url'),
  ]);
  const octets = (b: Buffer) => Buffer.from(new asn1js.OctetString({ valueHex: b }).toBER(false));

  it('builds the same SPKI Node exports for the key', () => {
    expect(ecPointToSpki(p256Oid, octets(point)).equals(key.spkiDer)).toBe(true);
  });

  it('refuses another curve', () => {
    const p384 = Buffer.from(new asn1js.ObjectIdentifier({ value: '1.3.132.0.34' }).toBER(false));
    expect(() => ecPointToSpki(p384, octets(point))).toThrow(/not a P-256 key/);
  });

  it('refuses a raw point that is not wrapped in an OCTET STRING', () => {
    expect(() => ecPointToSpki(p256Oid, point)).toThrow(SignerError);
  });

  it('refuses a compressed point and a point off the curve', () => {
    const compressed = Buffer.concat([Buffer.from([2]), point.subarray(1, 33)]);
    expect(() => ecPointToSpki(p256Oid, octets(compressed))).toThrow(/uncompressed/);
    const off = Buffer.from(point);
    off[64] = off[64]! ^ 1;
    expect(() => ecPointToSpki(p256Oid, octets(off))).toThrow(/rejected/);
  });
});
