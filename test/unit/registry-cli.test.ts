// Registry CLI pieces that need neither a TPM nor a database: reading an agent's public key in every
// form admins have it (core/spki-input.ts), the PKCS#11 EC point → SPKI conversion, argument and
// environment checks, and the command line's exit codes for usage errors.
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
import { signerOptionsFromEnv } from '../../pkcs11/signer-options.js';
import { checkField, checkKeyId, parseValidDays } from '../../registry-cli/args.js';
import { databaseFromEnv } from '../../registry-cli/env.js';
import { EnvironmentError, UsageError } from '../../registry-cli/errors.js';
import { runCli } from '../../registry-cli/program.js';

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

describe('signerOptionsFromEnv', () => {
  const base = { TPM2_PKCS11_STORE: '/tmp/store', AGENT_GATEWAY_TPM_USER_PIN: '1234' };

  it("uses the original's environment names and defaults", () => {
    const o = signerOptionsFromEnv('org-alice', base);
    expect(o).toMatchObject({
      store: '/tmp/store',
      userPin: '1234',
      tokenLabel: 'agent-gateway',
      keyLabel: 'org-alice',
      soPin: undefined,
    });
    expect(o.modulePath).toMatch(/libtpm2_pkcs11\.so$/);
    const custom = signerOptionsFromEnv('k', {
      ...base,
      TPM2_PKCS11_MODULE: '/x.so',
      AGENT_GATEWAY_TPM_TOKEN_LABEL: 'tok',
      AGENT_GATEWAY_TPM_SO_PIN: 'so',
    });
    expect(custom).toMatchObject({ modulePath: '/x.so', tokenLabel: 'tok', soPin: 'so' });
  });

  it.each([
    ['TPM2_PKCS11_STORE', { AGENT_GATEWAY_TPM_USER_PIN: '1234' }],
    ['AGENT_GATEWAY_TPM_USER_PIN', { TPM2_PKCS11_STORE: '/tmp/store' }],
    ['AGENT_GATEWAY_TPM_USER_PIN', { TPM2_PKCS11_STORE: '/tmp/store', AGENT_GATEWAY_TPM_USER_PIN: '' }],
  ])('names the missing %s', (name, env) => {
    expect(() => signerOptionsFromEnv('k', env)).toThrow(name);
  });
});

describe('databaseFromEnv', () => {
  it('prefers AGENT_GATEWAY_DATABASE_URL over DATABASE_URL and never displays the password', () => {
    const t = databaseFromEnv({
      AGENT_GATEWAY_DATABASE_URL: 'postgresql://admin:s3cret@db.internal:6543/registry',
      DATABASE_URL: 'postgresql://other@x/y',
    });
    expect(t.source).toBe('AGENT_GATEWAY_DATABASE_URL');
    expect(t.display).toBe('db.internal:6543/registry');
    expect(t.display).not.toContain('s3cret');
    expect(databaseFromEnv({ DATABASE_URL: 'postgres://u@h/d' }).source).toBe('DATABASE_URL');
  });

  it.each([
    [{}, /AGENT_GATEWAY_DATABASE_URL/],
    [{ AGENT_GATEWAY_DATABASE_URL: 'not a url' }, /not a URL/],
    [{ DATABASE_URL: 'mysql://h/d' }, /postgresql:\/\//],
  ])('refuses %j', (env, message) => {
    expect(() => databaseFromEnv(env)).toThrow(EnvironmentError);
    expect(() => databaseFromEnv(env)).toThrow(message);
  });
});

describe('argument checks', () => {
  it('parses VALID_DAYS within 1..36500 and calls anything else a usage error', () => {
    expect(parseValidDays('30')).toBe(30);
    expect(parseValidDays(' 365 ')).toBe(365);
    for (const bad of ['0', '-1', '1.5', 'ten', '', '36501', '1e3']) {
      expect(() => parseValidDays(bad)).toThrow(UsageError);
    }
  });

  it('calls empty fields and control characters usage errors, accepts "="', () => {
    expect(checkField('SUBJECT_IDENTITY', 'agent=alpha')).toBe('agent=alpha');
    expect(() => checkField('SUBJECT_IDENTITY', '')).toThrow(UsageError);
    expect(() => checkField('SUBJECT_IDENTITY', 'agent\nalpha')).toThrow(UsageError);
    expect(() => checkField('PERMISSION_ID', 'p\u0000')).toThrow(/control character/);
  });

  it.each(['org-alice', 'alice-2026', 'org.alice@example.com', 'org_alice:prod/1', 'clé-ключ-鍵'])(
    'accepts KEY_ID %j',
    (keyId) => {
      expect(checkKeyId(keyId)).toBe(keyId);
    },
  );

  it.each([
    ['empty', '', /KEY_ID is empty/],
    ['a space', 'org alice', /U\+0020 at position 3/],
    ['a leading space', ' org-alice', /U\+0020 at position 0/],
    ['a trailing newline', 'org-alice\n', /U\+000A/],
    ['a tab', 'org\talice', /U\+0009/],
    ['a NUL', 'org\u0000alice', /U\+0000/],
    ['DEL', 'org\u007falice', /U\+007F/],
    ['a C1 control', 'org\u0085alice', /U\+0085/],
    ['a no-break space', 'org\u00a0alice', /U\+00A0/],
    ['an ideographic space', 'org\u3000alice', /U\+3000/],
    ['a line separator', 'org\u2028alice', /U\+2028/],
    ['a zero-width space', 'org\u200balice', /U\+200B/],
    ['a bidi override', 'org\u202ealice', /U\+202E/],
    ['a lone surrogate', 'org\ud800alice', /U\+D800/],
  ])('refuses a KEY_ID with %s as a usage error', (_name, keyId, message) => {
    expect(() => checkKeyId(keyId)).toThrow(UsageError);
    expect(() => checkKeyId(keyId)).toThrow(message);
  });
});

describe('command line', () => {
  async function run(args: string[], env: Record<string, string> = {}) {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(['node', 'cli.js', ...args], env, {
      out: (t) => out.push(t),
      err: (t) => err.push(t),
    });
    return { code, stdout: out.join(''), stderr: err.join('') };
  }

  it.each([
    [[]],
    [['register-principal-key']],
    [['grant-principal-scope', 'org-alice']],
    [['agent-permissions']],
    [['agent-permissions', 'grant', 'k', 'id', 'spki']],
    [['agent-permissions', 'frobnicate']],
    [['agent-permissions', 'check', 'a', 'b', 'c', 'd']],
    [['register-principal-key', 'k', '365', '--no-such-flag']],
  ])('exits 2 on a usage error: %j', async (args) => {
    const r = await run(args);
    expect(r.code).toBe(2);
    expect(r.stderr).not.toBe('');
  });

  it.each([
    ['--help'],
    ['register-principal-key --help'],
    ['grant-principal-scope --help'],
    ['agent-permissions grant --help'],
    ['agent-permissions delete --help'],
    ['agent-permissions list --help'],
    ['agent-permissions check --help'],
    ['migrate --help'],
  ])('%s prints usage and exits 0', async (args) => {
    const r = await run(args.split(' '));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage:/);
    expect(r.stdout).toMatch(/Exit status/);
  });

  it('names the missing database variable (exit 2) before touching anything', async () => {
    const r = await run(['agent-permissions', 'list']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/AGENT_GATEWAY_DATABASE_URL/);
  });

  it('names the missing TPM variables (exit 2)', async () => {
    const db = { AGENT_GATEWAY_DATABASE_URL: 'postgresql://u@127.0.0.1:1/d' };
    const r = await run(['register-principal-key', 'org-alice'], db);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/TPM2_PKCS11_STORE/);
  });

  it('refuses (exit 1) an agent key the gateway could never honour before needing a database', async () => {
    const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' })
      .publicKey.export({ type: 'spki', format: 'der' })
      .toString('hex');
    const r = await run(['agent-permissions', 'grant', 'k', 'agent', p384, 'docstore']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^refused: /);
    expect(r.stderr).toMatch(/P-256/);
  });

  it('calls malformed grant arguments usage errors (exit 2) before needing a database', async () => {
    const spki = p256().spkiDer.toString('hex');
    const cases: [string[], RegExp][] = [
      [['agent-permissions', 'grant', 'k', 'agent\nalpha', spki, 'docstore'], /control character/],
      [['agent-permissions', 'grant', 'k', 'agent', spki, 'docstore:0'], /invalid destination/],
      [['agent-permissions', 'grant', 'k', 'agent', spki, '127.1'], /invalid destination/],
      [['agent-permissions', 'grant', 'k', 'agent', spki, 'docstore', '30', 'p\tq'], /control character/],
      [['agent-permissions', 'grant', 'org alice', 'agent', spki, 'docstore'], /KEY_ID "org alice"/],
      [['agent-permissions', 'grant', 'k', 'a'.repeat(257), spki, 'docstore'], /257 bytes, longer than 256/],
    ];
    for (const [args, message] of cases) {
      const r = await run(args);
      expect(r.code, JSON.stringify(args)).toBe(2);
      expect(r.stderr).toMatch(/^error: /);
      expect(r.stderr).toMatch(message);
    }
  });

  it('exits 2 for an invalid destination in every command, before needing a database', async () => {
    const spki = p256().spkiDer.toString('hex');
    for (const args of [
      ['agent-permissions', 'grant', 'k', 'agent', spki, 'docstore:0'],
      ['grant-principal-scope', 'k', 'docstore', 'bad host'],
      ['agent-permissions', 'check', 'agent', spki, 'docstore:0'],
      ['agent-permissions', 'delete', 'agent', spki, '--destination', 'docstore:0'],
    ]) {
      const r = await run(args);
      expect(r.code, JSON.stringify(args)).toBe(2);
      expect(r.stderr).toMatch(/^error: invalid destination /);
    }
  });

  it('exits 2 for a KEY_ID with whitespace or control characters, before needing a database or TPM', async () => {
    const spki = p256().spkiDer.toString('hex');
    for (const keyId of ['org alice', 'org\talice', 'org-alice\n', 'org\u200balice']) {
      for (const args of [
        ['register-principal-key', keyId],
        ['grant-principal-scope', keyId, 'docstore'],
        ['agent-permissions', 'grant', keyId, 'agent', spki, 'docstore'],
      ]) {
        const r = await run(args);
        expect(r.code, JSON.stringify(args)).toBe(2);
        expect(r.stderr).toMatch(
          /^error: KEY_ID .* must not contain whitespace, control or invisible characters/,
        );
      }
    }
  });

  it('documents the exit codes for usage errors and --expect-some in --help', async () => {
    const top = await run(['--help']);
    expect(top.stdout).toMatch(
      /Usage errors \(2\) are malformed arguments, the same in every command: an invalid destination/,
    );
    expect(top.stdout).toMatch(/outside the signer's scope.*\n?.*is refused \(1\)/);
    expect(top.stdout).toMatch(/tpm2-pkcs11's own/);
    const del = await run(['agent-permissions', 'delete', '--help']);
    expect(del.stdout).toMatch(/--expect-some\s+exit 1 when nothing was revoked/);
    const check = await run(['agent-permissions', 'check', '--help']);
    expect(check.stdout).toMatch(/2 for an invalid DEST/);
  });

  it('exits 2 for an unreadable SPKI argument and a bad VALID_DAYS', async () => {
    const spki = p256().spkiDer.toString('hex');
    expect((await run(['agent-permissions', 'grant', 'k', 'a', 'no-such-file', 'docstore'])).code).toBe(2);
    expect((await run(['agent-permissions', 'grant', 'k', 'a', spki, 'docstore', 'ten'])).code).toBe(2);
    expect((await run(['agent-permissions', 'check', 'a', spki, 'docstore:0'])).code).toBe(2);
  });
});
