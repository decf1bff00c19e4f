// Registry CLI argument and environment checks, and the command line's exit codes for usage errors: all
// decided before a TPM or a database is needed. Reading agent keys is in registry-cli-keys.test.ts.
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signerOptionsFromEnv } from '../../pkcs11/signer-options.js';
import {
  checkField,
  checkKeyId,
  parseDuration,
  parseRequestId,
  parseValidDays,
} from '../../registry-cli/args.js';
import { databaseFromEnv } from '../../registry-cli/env.js';
import { EnvironmentError, UsageError } from '../../registry-cli/errors.js';
import { runCli } from '../../registry-cli/program.js';
import { newP256 } from './fixtures/signed-rows.js';

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

  it('parses --for as minutes, hours or days (whole days stay days) and calls anything else a usage error', () => {
    expect(parseDuration('30m')).toEqual({ minutes: 30 });
    expect(parseDuration('1h')).toEqual({ minutes: 60 });
    expect(parseDuration('12h')).toEqual({ minutes: 720 });
    expect(parseDuration('2d')).toEqual({ days: 2 });
    expect(parseDuration('36500d')).toEqual({ days: 36_500 });
    for (const bad of ['0m', '30', '1.5h', '10s', 'h', '-1h', '1 h', '36501d', '1H', '']) {
      expect(() => parseDuration(bad)).toThrow(UsageError);
    }
  });

  it('takes request ids only in the gateway form', () => {
    expect(parseRequestId('req-0123456789abcdef0123')).toBe('req-0123456789abcdef0123');
    for (const bad of [
      'req-0123456789ABCDEF0123',
      'req-0123',
      'req-0123456789abcdef01234',
      ' req-0123456789abcdef0123',
    ]) {
      expect(() => parseRequestId(bad)).toThrow(UsageError);
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
    ['agent-permissions requests --help'],
    ['agent-permissions approve --help'],
    ['agent-permissions dismiss --help'],
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
    const spki = newP256().spkiDer.toString('hex');
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
    const spki = newP256().spkiDer.toString('hex');
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
    const spki = newP256().spkiDer.toString('hex');
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
    const spki = newP256().spkiDer.toString('hex');
    expect((await run(['agent-permissions', 'grant', 'k', 'a', 'no-such-file', 'docstore'])).code).toBe(2);
    expect((await run(['agent-permissions', 'grant', 'k', 'a', spki, 'docstore', 'ten'])).code).toBe(2);
    expect((await run(['agent-permissions', 'check', 'a', spki, 'docstore:0'])).code).toBe(2);
  });
});
