// Signature verification of registry rows: DER ECDSA P-256/SHA-256 made by node:crypto and by the
// openssl CLI (what an admin scripting around the registry would use), and high-S signatures, which
// OpenSSL and the original gateway accept.
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as asn1js from 'asn1js';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidPublicKeyError, p256PublicKey, rawToDer, verifyDerSignature } from '../../core/ecdsa.js';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import { decide } from '../../core/policy.js';
import { cachingVerifier } from '../../gateway/signature-verifier.js';
import { allowedCandidate, newP256, type PermissionSpec, ts } from './fixtures/signed-rows.js';

// Order of the P-256 group.
const N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

function decodeDer(der: Buffer): { r: bigint; s: bigint } {
  const parsed = asn1js.fromBER(new Uint8Array(der).buffer);
  const seq = parsed.result as asn1js.Sequence;
  const [r, s] = seq.valueBlock.value as [asn1js.Integer, asn1js.Integer];
  return { r: r.toBigInt(), s: s.toBigInt() };
}

function encodeDer(r: bigint, s: bigint): Buffer {
  const seq = new asn1js.Sequence({ value: [asn1js.Integer.fromBigInt(r), asn1js.Integer.fromBigInt(s)] });
  return Buffer.from(seq.toBER(false));
}

const NOW = ts('2026-05-10T00:00:00.000000Z');
const spec = (spkiDer: Buffer): PermissionSpec => ({
  permissionId: 'perm-openssl',
  signingKeyId: 'org-alice',
  subjectIdentity: 'agent-alpha',
  subjectSpkiDer: spkiDer,
  destination: 'api.example.com:443',
  notBefore: ts('2026-05-01T00:00:00.000000Z'),
  notAfter: ts('2026-06-01T00:00:00.000123Z'),
});

describe('ECDSA P-256 row signatures', () => {
  const dir = mkdtempSync(join(tmpdir(), 'agw-ecdsa-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('verifies a node:crypto signature and rejects any other message', () => {
    const k = newP256();
    const msg = canonicalPermissionBytes(spec(newP256().spkiDer));
    const sig = sign('sha256', msg, { key: k.privateKey, dsaEncoding: 'der' });
    const key = p256PublicKey(k.spkiDer);
    expect(verifyDerSignature(key, msg, sig)).toBe(true);
    expect(verifyDerSignature(key, Buffer.concat([msg, Buffer.from('x')]), sig)).toBe(false);
    expect(verifyDerSignature(p256PublicKey(newP256().spkiDer), msg, sig)).toBe(false);
    expect(verifyDerSignature(key, msg, Buffer.from('not der'))).toBe(false);
    expect(verifyDerSignature(key, msg, Buffer.alloc(0))).toBe(false);
  });

  it('verifies a signature made by `openssl dgst -sha256 -sign` (DER)', () => {
    const k = newP256();
    const keyPath = join(dir, 'key.pem');
    const msgPath = join(dir, 'msg.txt');
    writeFileSync(keyPath, k.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const msg = canonicalPermissionBytes(spec(newP256().spkiDer));
    writeFileSync(msgPath, msg);
    const sig = execFileSync('openssl', ['dgst', '-sha256', '-sign', keyPath, msgPath]);
    expect(sig[0]).toBe(0x30); // DER SEQUENCE
    expect(verifyDerSignature(p256PublicKey(k.spkiDer), msg, sig)).toBe(true);
    // And openssl agrees with what node:crypto signs.
    const nodeSig = sign('sha256', msg, { key: k.privateKey, dsaEncoding: 'der' });
    const sigPath = join(dir, 'node.sig');
    const pubPath = join(dir, 'pub.pem');
    writeFileSync(sigPath, nodeSig);
    writeFileSync(pubPath, k.publicKey.export({ type: 'spki', format: 'pem' }));
    const out = execFileSync('openssl', [
      'dgst',
      '-sha256',
      '-verify',
      pubPath,
      '-signature',
      sigPath,
      msgPath,
    ]);
    expect(out.toString()).toMatch(/Verified OK/);
  });

  it('accepts the high-S twin (r, n−s) of a valid signature', () => {
    const k = newP256();
    const msg = canonicalPermissionBytes(spec(newP256().spkiDer));
    const sig = sign('sha256', msg, { key: k.privateKey, dsaEncoding: 'der' });
    const { r, s } = decodeDer(sig);
    const twin = encodeDer(r, N - s);
    expect(twin.equals(sig)).toBe(false);
    // Exactly one of s and n−s is high.
    expect(s > N / 2n !== N - s > N / 2n).toBe(true);
    const key = p256PublicKey(k.spkiDer);
    expect(verifyDerSignature(key, msg, sig)).toBe(true);
    expect(verifyDerSignature(key, msg, twin)).toBe(true);
    // Not any s: s+1 fails.
    expect(verifyDerSignature(key, msg, encodeDer(r, s + 1n))).toBe(false);
  });

  it('raw r||s from a PKCS#11 token converts to DER that verifies', () => {
    const k = newP256();
    const msg = Buffer.from('hello');
    const raw = sign('sha256', msg, { key: k.privateKey, dsaEncoding: 'ieee-p1363' });
    expect(raw.length).toBe(64);
    expect(verifyDerSignature(p256PublicKey(k.spkiDer), msg, rawToDer(raw))).toBe(true);
  });

  it('raw r||s must have two equal, non-empty halves', () => {
    for (const length of [0, 1, 63]) {
      expect(() => rawToDer(new Uint8Array(length))).toThrow(`raw ECDSA signature has odd length ${length}`);
    }
    expect(decodeDer(rawToDer(Uint8Array.from([0, 1, 0, 2])))).toEqual({ r: 1n, s: 2n });
  });

  it('says why a signer key is refused', () => {
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    const ed = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'der' });
    const TEXTS = [
      [p384, 'invalid public key: expected an EC P-256 key, got ec secp384r1'],
      [ed, 'invalid public key: expected an EC P-256 key, got ed25519'],
    ] as const;
    for (const [spki, text] of TEXTS) {
      expect(() => p256PublicKey(spki)).toThrow(
        expect.objectContaining({ name: 'InvalidPublicKeyError', message: text }),
      );
    }
    expect(() => p256PublicKey(Buffer.from('garbage'))).toThrow(
      /^invalid public key: SPKI does not parse \(.+\)$/,
    );
  });

  it('a key that cannot verify ECDSA at all is a failed verification, not a throw', () => {
    const ed = generateKeyPairSync('ed25519').publicKey;
    expect(verifyDerSignature(ed, Buffer.from('m'), Buffer.alloc(64))).toBe(false);
  });

  it('refuses non-P-256 signer keys', () => {
    expect(() => p256PublicKey(Buffer.from('garbage'))).toThrow(InvalidPublicKeyError);
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    expect(() => p256PublicKey(p384)).toThrow(/P-256/);
    const ed = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'der' });
    expect(() => p256PublicKey(ed)).toThrow(InvalidPublicKeyError);
  });

  it('the gateway verifier (cached keys) accepts openssl and high-S signatures through decide()', () => {
    const verify = cachingVerifier(2);
    const fx = allowedCandidate(NOW);
    const { r, s } = decodeDer(fx.candidate.permission.signature);
    const highS = {
      ...fx.candidate,
      permission: { ...fx.candidate.permission, signature: encodeDer(r, N - s) },
    };
    expect(decide(fx.request, [fx.candidate], NOW, verify).allow).toBe(true);
    expect(decide(fx.request, [highS], NOW, verify).allow).toBe(true);
    // A signer SPKI that does not parse fails closed, repeatedly (negative entry cached).
    const broken = { ...fx.candidate, signer: { ...fx.candidate.signer!, spkiDer: Buffer.from('nope') } };
    for (let i = 0; i < 3; i++) {
      const d = decide(fx.request, [broken], NOW, verify);
      expect(d.allow ? 'allow' : d.reason).toBe('signature_invalid');
    }
    // Key cache eviction keeps working past its bound.
    for (let i = 0; i < 5; i++) {
      const other = allowedCandidate(NOW);
      expect(decide(other.request, [other.candidate], NOW, verify).allow).toBe(true);
    }
    expect(decide(fx.request, [fx.candidate], NOW, verify).allow).toBe(true);
  });
});
