// The registry CLI's root-of-trust helpers (docs/contract.md "Root of trust"), table-driven and decided
// before a token or a database is needed: root key ids as --root-key takes them, the window nesting the CLI
// refuses by before signing, and the trust roots `check` judges with (each bad one named, with why).
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCarrierCertificate } from '../../core/carrier-cert.js';
import { rootKeyId } from '../../core/root-signed-bytes.js';
import { spkiToPem } from '../../core/spki-input.js';
import { UsageError } from '../../registry-cli/errors.js';
import { parseRootKeyId } from '../../registry-cli/root-key.js';
import { windowNestError } from '../../registry-cli/rooting.js';
import { loadTrustRoots } from '../../registry-cli/trust-roots.js';
import { newP256 } from './fixtures/signed-rows.js';

const HEX64 = 'ab'.repeat(32);

describe('parseRootKeyId', () => {
  it('accepts exactly "sha256:" and 64 lowercase hex digits, as init-root prints', () => {
    const id = rootKeyId(newP256().spkiDer);
    expect(parseRootKeyId(id)).toBe(id);
    expect(parseRootKeyId(`sha256:${HEX64}`)).toBe(`sha256:${HEX64}`);
  });

  it.each([
    ['empty', ''],
    ['a key label', 'registry-root'],
    ['hex without the prefix', HEX64],
    ['uppercase hex', `sha256:${HEX64.toUpperCase()}`],
    ['uppercase prefix', `SHA256:${HEX64}`],
    ['63 digits', `sha256:${HEX64.slice(1)}`],
    ['65 digits', `sha256:${HEX64}a`],
    ['a non-hex digit', `sha256:${HEX64.slice(1)}g`],
    ['another hash', `sha384:${HEX64}`],
    ['a trailing newline', `sha256:${HEX64}\n`],
    ['leading space', ` sha256:${HEX64}`],
    ['base64 SPKI', newP256().spkiDer.toString('base64')],
  ])('refuses %s as a usage error quoting what it got', (_name, text) => {
    let err: unknown;
    try {
      parseRootKeyId(text, '--root-key');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toBe(
      '--root-key must be a root key id, "sha256:" and 64 lowercase hex digits as init-root.sh prints it, ' +
        `got ${JSON.stringify(text)}`,
    );
  });

  it('names the argument it was given', () => {
    expect(() => parseRootKeyId('x', 'root_key_id')).toThrow(/^root_key_id must be a root key id/);
  });
});

describe('windowNestError', () => {
  const T = (s: number) => `2026-05-10T12:00:${String(s).padStart(2, '0')}.000000Z`;
  const w = (a: number, b: number) => ({ notBefore: T(a), notAfter: T(b) });
  const outer = w(10, 20);
  it.each<[string, { notBefore: string; notAfter: string }, boolean]>([
    ['strictly inside', w(11, 19), true],
    ['equal bounds', w(10, 20), true],
    ['same start, ends earlier', w(10, 15), true],
    ['starts later, same end', w(15, 20), true],
    ['a single instant at the start', w(10, 10), true],
    ['starts one microsecond early', { notBefore: '2026-05-10T12:00:09.999999Z', notAfter: T(20) }, false],
    ['ends one microsecond late', { notBefore: T(10), notAfter: '2026-05-10T12:00:20.000001Z' }, false],
    ['starts before', w(9, 20), false],
    ['ends after', w(10, 21), false],
    ['wider on both sides', w(5, 25), false],
    ['wholly before', w(1, 5), false],
    ['wholly after', w(25, 30), false],
    ['overlaps the start', w(5, 15), false],
    ['overlaps the end', w(15, 25), false],
  ])('%s', (_name, inner, within) => {
    const why = windowNestError('scope s', inner, 'key k', outer);
    if (within) expect(why).toBeUndefined();
    else
      expect(why).toBe(
        `scope s window ${inner.notBefore} .. ${inner.notAfter} is not within key k window ` +
          `${outer.notBefore} .. ${outer.notAfter}`,
      );
  });
});

describe('loadTrustRoots', () => {
  let dir: string;
  const root = newP256();
  const id = rootKeyId(root.spkiDer);
  const file = (name: string, text: string | Buffer) => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const none = { trustRoot: [], trustRootFile: [] };
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'agw-roots-unit-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('keys the base64, PEM and config roots by their id; none given is an empty map', () => {
    const other = newP256();
    const roots = loadTrustRoots({
      trustRoot: [root.spkiDer.toString('base64')],
      trustRootFile: [file('other.pem', spkiToPem(other.spkiDer))],
    });
    expect([...roots.keys()].sort()).toEqual([id, rootKeyId(other.spkiDer)].sort());
    expect(roots.get(id)).toEqual(root.spkiDer);
    expect(loadTrustRoots(none).size).toBe(0);
    const same = loadTrustRoots({
      trustRoot: [root.spkiDer.toString('base64')],
      trustRootFile: [file('same.pem', spkiToPem(root.spkiDer))],
    });
    expect([...same.keys()]).toEqual([id]);
  });

  const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey.export({
    type: 'spki',
    format: 'der',
  });
  const ed25519 = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'der' });
  const b64Cases: [string, string, RegExp][] = [
    [
      'not base64',
      'MFkw!!EwYH',
      /^--trust-root #1 is not a P-256 public key: not base64 of a DER SubjectPublicKeyInfo$/,
    ],
    [
      'base64 with a typo that decoding would skip',
      `${root.spkiDer.toString('base64').slice(0, 20)}*${root.spkiDer.toString('base64').slice(20)}`,
      /^--trust-root #1 is not a P-256 public key: not base64/,
    ],
    [
      'base64 cut short (length not a multiple of 4)',
      root.spkiDer.toString('base64').slice(0, 30),
      /^--trust-root #1 is not a P-256 public key: not base64 of a DER SubjectPublicKeyInfo$/,
    ],
    [
      'base64 of a truncated SPKI',
      root.spkiDer.subarray(0, 40).toString('base64'),
      /^--trust-root #1 is not a P-256 public key: cannot read a public key from entry: not DER/,
    ],
    [
      'base64 of bytes that are no SPKI',
      Buffer.from('hello, root').toString('base64'),
      /^--trust-root #1 is not a P-256 public key: cannot read a public key from entry: not DER/,
    ],
    [
      'a P-384 key',
      p384.toString('base64'),
      /^--trust-root #1 is not a P-256 public key: invalid public key: expected an EC P-256 key, got ec secp384r1$/,
    ],
    ['an Ed25519 key', ed25519.toString('base64'), /^--trust-root #1 is not a P-256 public key: .*P-256/],
  ];
  it.each(b64Cases)('--trust-root: %s is a usage error naming the entry', (_name, entry, message) => {
    let err: unknown;
    try {
      loadTrustRoots({ trustRoot: [entry], trustRootFile: [] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(message);
  });

  it('numbers the bad --trust-root among good ones', () => {
    const good = root.spkiDer.toString('base64');
    expect(() => loadTrustRoots({ trustRoot: [good, good, 'nope!'], trustRootFile: [] })).toThrow(
      /^--trust-root #3 is not a P-256 public key: /,
    );
  });

  // [case, file, what the message says after the file's name]
  const fileCases: [string, () => string, RegExp][] = [
    ['a missing file', () => path.join(dir, 'missing.pem'), /^: cannot read: ENOENT: no such file/],
    ['a directory', () => dir, /^: cannot read: EISDIR/],
    [
      'an empty file',
      () => file('empty.pem', ''),
      / is not a P-256 public key: .*not DER \(Input buffer has zero length\)$/,
    ],
    [
      'DER instead of PEM',
      () => file('root.der', root.spkiDer),
      / is not a P-256 public key: .*must hold a PEM PUBLIC KEY, found spki-der$/,
    ],
    [
      'a P-384 PEM',
      () => file('p384.pem', spkiToPem(p384)),
      / is not a P-256 public key: .*expected an EC P-256 key, got ec secp384r1$/,
    ],
    [
      'a private key',
      () => file('key.pem', root.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string),
      / is not a P-256 public key: .*PEM holds PRIVATE KEY, expected PUBLIC KEY .*this is a private key/,
    ],
    [
      'a PEM that is not a key at all',
      () => file('junk.pem', '-----BEGIN JUNK-----\nAAAA\n-----END JUNK-----\n'),
      / is not a P-256 public key: .*PEM holds JUNK, expected PUBLIC KEY/,
    ],
  ];
  it.each(fileCases)('--trust-root-file: %s is a usage error naming the file and why', (_name, make, why) => {
    const name = make();
    let err: unknown;
    try {
      loadTrustRoots({ trustRoot: [], trustRootFile: [name] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    const message = (err as Error).message;
    expect(message.startsWith(`--trust-root-file ${name}`)).toBe(true);
    expect(message.slice(`--trust-root-file ${name}`.length)).toMatch(why);
  });

  it('--trust-root-file: a certificate instead of a PUBLIC KEY is refused, saying what it found', async () => {
    const cert = await createCarrierCertificate({ subjectSpkiDer: root.spkiDer, identity: 'agent-alpha' });
    const name = file('root.crt', cert.pem);
    expect(() => loadTrustRoots({ trustRoot: [], trustRootFile: [name] })).toThrow(
      new RegExp(
        `^--trust-root-file ${name.replace(/[.]/g, '\\.')} is not a P-256 public key: .*PEM PUBLIC KEY, found`,
      ),
    );
  });

  it('--config: a file that does not read or parse is a usage error naming it', () => {
    const missing = path.join(dir, 'missing.toml');
    expect(() => loadTrustRoots({ ...none, config: missing })).toThrow(
      new RegExp(`^--config ${missing.replace(/[.]/g, '\\.')}: .*cannot read`),
    );
    const broken = file('broken.toml', '[policy\ntrust_roots = [');
    expect(() => loadTrustRoots({ ...none, config: broken })).toThrow(/\(syntax\)/);
  });
});
