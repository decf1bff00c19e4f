// The registry CLI as admins run it: `node dist/registry-cli/cli.js …` (and the registry-cli/*.sh
// wrappers) as subprocesses, against a real swtpm through real tpm2-pkcs11 and a real PostgreSQL.
// The steps build on each other (register → scope → grant → check → revoke), so they run in order.
// Needs `npm run build` first (test/run.sh does it).
import { generateKeyPairSync } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createCarrierCertificate } from '../../core/carrier-cert.js';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import { spkiToPem } from '../../core/spki-input.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { freePort } from '../../dev-support/ports.js';
import { createDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { type CommandResult, runCommand } from '../../dev-support/run-command.js';
import { readPublicSpki, startSwtpm, type TpmHandle } from '../../dev-support/swtpm.js';

const CLI = path.join(repoRoot, 'dist', 'registry-cli', 'cli.js');
const USER_PIN = 'alice-user-pin';
const SO_PIN = 'alice-so-pin';
const TOKEN = 'agent-gateway';

const adminUrl = inject('pgAdminUrl');
let databaseUrl: string;
let tpm: TpmHandle;
let db: pg.Client;
let work: string;
let env: NodeJS.ProcessEnv;

// The agent's key as the admin has it: a PEM public key file, and a carrier-style certificate.
const agent = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
const agentSpki = agent.publicKey.export({ type: 'spki', format: 'der' });
let agentPem: string;
let betaCertPem: string;
let betaSpki: Buffer;

function cli(args: string[], extraEnv: Record<string, string | undefined> = {}): Promise<CommandResult> {
  const merged: NodeJS.ProcessEnv = { ...env };
  for (const [k, v] of Object.entries(extraEnv)) {
    if (v === undefined) delete merged[k];
    else merged[k] = v;
  }
  return runCommand(process.execPath, [CLI, ...args], { env: merged, timeoutMs: 60_000 });
}

/** Run and insist on an exit code, showing the output when it differs. */
async function expectExit(code: number, args: string[], extraEnv?: Record<string, string | undefined>) {
  const r = await cli(args, extraEnv);
  expect(r.code, `${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(code);
  return r;
}

/** Every row of the registry, every column, as text: equal snapshots mean nothing changed. */
async function snapshot(): Promise<string> {
  const tables = ['principal_signing_keys', 'principal_key_permissions', 'permission_registry'];
  const parts: string[] = [];
  for (const t of tables) {
    const r = await db.query<{ row: string }>(`SELECT t::text AS row FROM ${t} t ORDER BY 1`);
    parts.push(`${t}:${r.rows.map((x) => x.row).join('|')}`);
  }
  return parts.join('\n');
}

const ts = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

async function scopeRows(keyId: string, destination: string) {
  const r = await db.query<{ id: string; nb: string; na: string; revoked: string | null }>(
    `SELECT id::text, ${ts('not_before')} AS nb, ${ts('not_after')} AS na, ${ts('revoked_at')} AS revoked
     FROM principal_key_permissions WHERE signing_key_id = $1 AND destination = $2 ORDER BY id`,
    [keyId, destination],
  );
  return r.rows;
}

/** Token labels in the store, and the labels of the private keys in `token` (when it exists). */
function tokenContents(token = TOKEN): { tokens: string[]; keys: string[] } {
  Object.assign(process.env, tpm.env);
  if (!existsSync(tpm.env.TPM2_PKCS11_STORE)) return { tokens: [], keys: [] };
  const lib = new pkcs11js.PKCS11();
  lib.load(tpm.env.TPM2_PKCS11_MODULE);
  lib.C_Initialize();
  try {
    const slots = lib
      .C_GetSlotList(true)
      .filter((s) => (lib.C_GetTokenInfo(s).flags & pkcs11js.CKF_TOKEN_INITIALIZED) !== 0);
    const tokens = slots.map((s) => lib.C_GetTokenInfo(s).label.trim());
    const slot = slots.find((s) => lib.C_GetTokenInfo(s).label.trim() === token);
    if (slot === undefined) return { tokens, keys: [] };
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    try {
      lib.C_Login(session, pkcs11js.CKU_USER, USER_PIN);
      lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
      const handles = lib.C_FindObjects(session, 100);
      lib.C_FindObjectsFinal(session);
      const keys = handles.map((h) =>
        lib.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_LABEL }])[0]!.value.toString('utf8'),
      );
      return { tokens, keys: keys.sort() };
    } finally {
      lib.C_CloseSession(session);
    }
  } finally {
    lib.C_Finalize();
    lib.close();
  }
}

/** The TPM's dictionary-attack failure counter (TPM2_PT_LOCKOUT_COUNTER). */
async function lockoutCounter(): Promise<number> {
  const r = await runCommand('tpm2_getcap', ['properties-variable'], {
    env: { ...process.env, ...tpm.env },
    check: true,
  });
  const m = /TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+|\d+)/.exec(r.stdout);
  if (m === null) throw new Error(`no TPM2_PT_LOCKOUT_COUNTER in: ${r.stdout}`);
  return Number(m[1]);
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` before these tests`);
  work = mkdtempSync(path.join(os.tmpdir(), 'agw-cli-e2e-'));
  [tpm, databaseUrl] = await Promise.all([startSwtpm(), createDatabase(adminUrl, 'registry_cli_e2e')]);
  db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  env = {
    ...process.env,
    ...tpm.env,
    AGENT_GATEWAY_DATABASE_URL: databaseUrl,
    AGENT_GATEWAY_TPM_USER_PIN: USER_PIN,
    AGENT_GATEWAY_TPM_SO_PIN: SO_PIN,
  };
  delete env['AGENT_GATEWAY_TPM_TOKEN_LABEL'];
  agentPem = path.join(work, 'agent-alpha.pub.pem');
  writeFileSync(agentPem, spkiToPem(agentSpki));

  // agent-beta's key as a carrier certificate, the file an agent's operator actually has.
  betaSpki = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({
    type: 'spki',
    format: 'der',
  });
  const cert = await createCarrierCertificate({ subjectSpkiDer: betaSpki, identity: 'agent-beta' });
  betaCertPem = path.join(work, 'agent-beta.crt');
  writeFileSync(betaCertPem, cert.pem);
});

afterAll(async () => {
  await db?.end().catch(() => {});
  await tpm?.stop();
  if (databaseUrl) await dropDatabase(adminUrl, databaseUrl).catch(() => {});
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('registry CLI end to end', () => {
  let alphaPermission: string;
  /** agent-beta's active row: each renewal is a new row under a new id. */
  let betaPermission: string;

  it('refuses to work on a database without the registry schema (exit 2, says to migrate)', async () => {
    const r = await expectExit(2, ['agent-permissions', 'list']);
    expect(r.stderr).toMatch(/migrate\.sh/);
  });

  it('migrate.sh applies the migrations, then reports up to date', async () => {
    const first = await runCommand(path.join(repoRoot, 'registry-cli', 'migrate.sh'), [], { env });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/applied 0001_signed_authorization_registry\.sql/);
    const second = await runCommand(path.join(repoRoot, 'registry-cli', 'migrate.sh'), [], { env });
    expect(second.code).toBe(0);
    expect(second.stdout).toMatch(/up to date/);
  });

  it('the wrappers tell to build when dist/ is missing (exit 2)', async () => {
    const fakeRoot = path.join(work, 'fake-root');
    mkdirSync(path.join(fakeRoot, 'registry-cli'), { recursive: true });
    const script = path.join(fakeRoot, 'registry-cli', 'agent-permissions.sh');
    for (const name of ['agent-permissions.sh', 'run-cli.sh'])
      copyFileSync(path.join(repoRoot, 'registry-cli', name), path.join(fakeRoot, 'registry-cli', name));
    const r = await runCommand('bash', [script, 'list'], { env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/npm run build/);
  });

  it('needs the SO PIN to create the token on a fresh TPM, and changes nothing without it', async () => {
    const before = await snapshot();
    const r = await expectExit(2, ['register-principal-key', 'org-alice'], {
      AGENT_GATEWAY_TPM_SO_PIN: undefined,
    });
    expect(r.stderr).toMatch(/AGENT_GATEWAY_TPM_SO_PIN/);
    expect(await snapshot()).toBe(before);
  });

  it('register-principal-key creates token and key, and a second run is idempotent', async () => {
    const first = await expectExit(0, ['register-principal-key', 'org-alice']);
    expect(first.stdout).toMatch(/registered principal key org-alice \(created TPM token and key/);
    const rows1 = await db.query(
      `SELECT public_key_spki_der, ${ts('not_before')} AS nb, ${ts('not_after')} AS na FROM principal_signing_keys`,
    );
    expect(rows1.rows).toHaveLength(1);

    const second = await runCommand(
      path.join(repoRoot, 'registry-cli', 'register-principal-key.sh'),
      ['org-alice'],
      {
        env,
      },
    );
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/refreshed principal key org-alice \(existing TPM key\)/);
    expect(second.stderr).toMatch(
      /^note: registration of org-alice extended to \S+ \.\. \S+ \(not_after was \S+\); a refresh never shortens/,
    );
    const rows2 = await db.query(
      `SELECT public_key_spki_der, ${ts('not_before')} AS nb, ${ts('not_after')} AS na FROM principal_signing_keys`,
    );
    expect(rows2.rows).toHaveLength(1);
    expect(rows2.rows[0].public_key_spki_der.equals(rows1.rows[0].public_key_spki_der)).toBe(true);
    expect(rows2.rows[0].nb).toBe(rows1.rows[0].nb);
    // 365 days from the later run.
    expect(parseTimestamp(rows2.rows[0].na)).toBeGreaterThan(parseTimestamp(rows1.rows[0].na));

    // The registered SPKI is the TPM key's, as the token itself exports it.
    const exported = readPublicSpki(tpm, { token: TOKEN, label: 'org-alice' });
    expect(rows2.rows[0].public_key_spki_der.equals(exported)).toBe(true);
  });

  it('a refresh with fewer VALID_DAYS never shortens the registration, and says so', async () => {
    const window = async () =>
      (
        await db.query<{ nb: string; na: string }>(
          `SELECT ${ts('not_before')} AS nb, ${ts('not_after')} AS na FROM principal_signing_keys WHERE key_id = 'org-alice'`,
        )
      ).rows[0]!;
    const before = await window();
    const r = await expectExit(0, ['register-principal-key', 'org-alice', '7']);
    expect(r.stdout).toMatch(/refreshed principal key org-alice/);
    expect(r.stdout).toContain(`  valid: ${before.nb} .. ${before.na}`);
    expect(r.stderr).toMatch(
      new RegExp(
        `^note: registration of org-alice kept at ${before.nb} \\.\\. ${before.na}: now \\+ 7 days \\(\\S+\\) would end earlier, ` +
          'and a refresh never shortens a registration',
      ),
    );
    expect(await window()).toEqual(before);
  });

  it('the registered key is sensitive and not extractable in the token', () => {
    Object.assign(process.env, tpm.env);
    const lib = new pkcs11js.PKCS11();
    lib.load(tpm.env.TPM2_PKCS11_MODULE);
    lib.C_Initialize();
    try {
      const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === TOKEN);
      expect(slot).toBeDefined();
      const session = lib.C_OpenSession(slot!, pkcs11js.CKF_SERIAL_SESSION);
      try {
        lib.C_Login(session, pkcs11js.CKU_USER, USER_PIN);
        lib.C_FindObjectsInit(session, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
          { type: pkcs11js.CKA_LABEL, value: 'org-alice' },
        ]);
        const keys = lib.C_FindObjects(session, 4);
        lib.C_FindObjectsFinal(session);
        expect(keys).toHaveLength(1);
        const attrs = lib.C_GetAttributeValue(session, keys[0]!, [
          { type: pkcs11js.CKA_SENSITIVE },
          { type: pkcs11js.CKA_EXTRACTABLE },
          { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
        ]);
        expect(attrs.map((a) => a.value[0])).toEqual([1, 0, 1]);
        expect(() => lib.C_GetAttributeValue(session, keys[0]!, [{ type: pkcs11js.CKA_VALUE }])).toThrow(
          /CKR_/,
        );
      } finally {
        lib.C_CloseSession(session);
      }
    } finally {
      lib.C_Finalize();
      lib.close();
    }
  });

  it('never replaces a different registered key without --replace', async () => {
    const tpmKey = (
      await db.query('SELECT public_key_spki_der FROM principal_signing_keys WHERE key_id = $1', [
        'org-alice',
      ])
    ).rows[0].public_key_spki_der as Buffer;
    // As if the TPM had been reset and a new key made under the same label.
    const stranger = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    await db.query('UPDATE principal_signing_keys SET public_key_spki_der = $1 WHERE key_id = $2', [
      stranger,
      'org-alice',
    ]);
    const before = await snapshot();
    const refused = await expectExit(1, ['register-principal-key', 'org-alice']);
    expect(refused.stderr).toMatch(/different public key.*--replace/);
    expect(await snapshot()).toBe(before);

    const replaced = await expectExit(0, ['register-principal-key', 'org-alice', '365', '--replace']);
    expect(replaced.stdout).toMatch(/replaced principal key org-alice/);
    const now = (
      await db.query('SELECT public_key_spki_der FROM principal_signing_keys WHERE key_id = $1', [
        'org-alice',
      ])
    ).rows[0].public_key_spki_der as Buffer;
    expect(now.equals(tpmKey)).toBe(true);
  });

  it('--replace revokes the scopes delegated to the old key, in the same transaction', async () => {
    await expectExit(0, ['register-principal-key', 'org-erin']);
    await expectExit(0, ['grant-principal-scope', 'org-erin', 'docstore', 'api.example.com']);
    // As if the TPM had been reset: the registered key is not the one in the token any more.
    const stranger = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    await db.query('UPDATE principal_signing_keys SET public_key_spki_der = $1 WHERE key_id = $2', [
      stranger,
      'org-erin',
    ]);
    const replaced = await expectExit(0, ['register-principal-key', 'org-erin', '--replace']);
    expect(replaced.stdout).toMatch(/^replaced principal key org-erin/);
    expect(replaced.stdout).toContain(
      '  revoked the 2 scopes delegated to the old key: api.example.com:443, docstore:443; ' +
        'delegate again with grant-principal-scope.sh org-erin DEST...',
    );
    for (const destination of ['docstore:443', 'api.example.com:443']) {
      const rows = await scopeRows('org-erin', destination);
      expect(rows).toHaveLength(1);
      expect(rows[0]!.revoked, destination).not.toBeNull();
    }
    // The new key signs nothing until a destination is delegated to it again.
    const refused = await expectExit(1, [
      'agent-permissions',
      'grant',
      'org-erin',
      'agent-alpha',
      agentPem,
      'docstore',
    ]);
    expect(refused.stderr).toMatch(/outside the scope of principal key org-erin \(active scope: none\)/);
    await expectExit(0, ['grant-principal-scope', 'org-erin', 'docstore']);
    expect(await scopeRows('org-erin', 'docstore:443')).toHaveLength(2);
    // A replacement with no scope left to revoke says so.
    await db.query('UPDATE principal_signing_keys SET public_key_spki_der = $1 WHERE key_id = $2', [
      stranger,
      'org-erin',
    ]);
    await db.query(
      "UPDATE principal_key_permissions SET revoked_at = now() WHERE signing_key_id = 'org-erin' AND revoked_at IS NULL",
    );
    const again = await expectExit(0, ['register-principal-key', 'org-erin', '--replace']);
    expect(again.stdout).toContain('  the old key had no active scope; nothing else was revoked');
  });

  it('a registered KEY_ID whose key is not in the TPM is refused before anything is created there', async () => {
    const stranger = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    await db.query(
      `INSERT INTO principal_signing_keys (key_id, algorithm, public_key_spki_der, not_before, not_after)
       VALUES ('org-dave', 'ecdsa_p256_sha256', $1, now(), now() + interval '30 days')`,
      [stranger],
    );
    const tpmBefore = tokenContents();
    expect(tpmBefore.keys).not.toContain('org-dave');
    const before = await snapshot();

    // The key is missing from the token.
    const noKey = await expectExit(1, ['register-principal-key', 'org-dave']);
    expect(noKey.stderr).toMatch(
      /^refused: principal key org-dave is registered \(public key sha256 [0-9a-f]{64}\), but token "agent-gateway" has no key labelled org-dave; nothing was created: .*--replace/,
    );
    // The token is missing.
    const noToken = await expectExit(1, ['register-principal-key', 'org-dave'], {
      AGENT_GATEWAY_TPM_TOKEN_LABEL: 'dave-token',
    });
    expect(noToken.stderr).toMatch(/token "dave-token" does not exist in .*; nothing was created/);
    // The whole store is missing.
    const store = path.join(work, 'no-store');
    const noStore = await expectExit(1, ['register-principal-key', 'org-dave'], { TPM2_PKCS11_STORE: store });
    expect(noStore.stderr).toMatch(/does not exist in .*no-store; nothing was created/);
    expect(existsSync(store)).toBe(false);

    expect(tokenContents()).toEqual(tpmBefore);
    expect(tokenContents('dave-token').tokens).not.toContain('dave-token');
    expect(await snapshot()).toBe(before);

    // --replace is the explicit way to make a new key for the id.
    const replaced = await expectExit(0, ['register-principal-key', 'org-dave', '30', '--replace']);
    expect(replaced.stdout).toMatch(
      /replaced principal key org-dave \(created TPM key in token "agent-gateway"\)/,
    );
    expect(tokenContents().keys).toContain('org-dave');
    const registered = (
      await db.query(`SELECT public_key_spki_der FROM principal_signing_keys WHERE key_id = 'org-dave'`)
    ).rows[0].public_key_spki_der as Buffer;
    expect(registered.equals(readPublicSpki(tpm, { token: TOKEN, label: 'org-dave' }))).toBe(true);
  });

  it('grant-principal-scope writes normalized destinations', async () => {
    const r = await expectExit(0, [
      'grant-principal-scope',
      'org-alice',
      'DocStore',
      'messaging:08443',
      '[0:0::1]',
      '--valid-days',
      '30',
    ]);
    expect(r.stdout).toMatch(/docstore:443: created/);
    expect(r.stdout).toMatch(/messaging:8443: created/);
    expect(r.stdout).toMatch(/\[::1\]:443: created/);
    expect(await scopeRows('org-alice', 'docstore:443')).toHaveLength(1);
  });

  it('grant signs a row the gateway policy allows; check says allow', async () => {
    const granted = await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-alpha',
      agentPem,
      'docstore',
      '10',
      '--json',
    ]);
    const row = JSON.parse(granted.stdout) as Record<string, string>;
    expect(row).toMatchObject({
      action: 'created',
      destination: 'docstore:443',
      subject_identity: 'agent-alpha',
    });
    expect(row['permission_id']).toMatch(/^perm-[0-9a-f-]{36}$/);
    alphaPermission = row['permission_id']!;
    expect(row['other_active_permissions']).toEqual([]);
    expect(granted.stderr).not.toMatch(/already has/);

    const check = await expectExit(0, [
      'agent-permissions',
      'check',
      'agent-alpha',
      agentPem,
      'DOCSTORE:443',
    ]);
    expect(check.stdout).toMatch(
      new RegExp(`^allow: agent-alpha -> docstore:443 by permission ${alphaPermission}`),
    );
    expect(check.stdout).toMatch(/rows considered: 1/);

    // Same triple through the shell wrapper, with the key as hex.
    const viaScript = await runCommand(
      path.join(repoRoot, 'registry-cli', 'agent-permissions.sh'),
      ['check', 'agent-alpha', agentSpki.toString('hex'), 'docstore', '--json'],
      { env },
    );
    expect(viaScript.code, viaScript.stderr).toBe(0);
    expect(JSON.parse(viaScript.stdout)).toMatchObject({ decision: 'allow', permission_id: alphaPermission });
  });

  it('the stored signature verifies with openssl against the registered SPKI and the canonical signed bytes', async () => {
    const r = await db.query(
      `SELECT p.permission_id, p.signing_key_id, p.subject_identity, p.subject_public_key_spki_der, p.destination,
         ${ts('p.not_before')} AS nb, ${ts('p.not_after')} AS na, p.signature, k.public_key_spki_der AS k_spki
       FROM permission_registry p JOIN principal_signing_keys k ON k.key_id = p.signing_key_id
       WHERE p.permission_id = $1`,
      [alphaPermission],
    );
    const p = r.rows[0];
    const bytes =
      'agent-gateway-permission-v1\n' +
      `permission_id=${p.permission_id}\n` +
      `signing_key_id=${p.signing_key_id}\n` +
      `subject_identity=${p.subject_identity}\n` +
      `subject_public_key_spki_der=${(p.subject_public_key_spki_der as Buffer).toString('hex')}\n` +
      `destination=${p.destination}\n` +
      `not_before=${p.nb}\n` +
      `not_after=${p.na}\n`;
    expect(p.nb).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    expect(
      canonicalPermissionBytes({
        permissionId: p.permission_id,
        signingKeyId: p.signing_key_id,
        subjectIdentity: p.subject_identity,
        subjectSpkiDer: p.subject_public_key_spki_der,
        destination: p.destination,
        notBefore: parseTimestamp(p.nb),
        notAfter: parseTimestamp(p.na),
      }).toString('utf8'),
    ).toBe(bytes);

    const dir = path.join(work, 'openssl');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'spki.der'), p.k_spki);
    writeFileSync(path.join(dir, 'sig.der'), p.signature);
    writeFileSync(path.join(dir, 'bytes.txt'), bytes);
    await runCommand('openssl', ['pkey', '-pubin', '-inform', 'DER', '-in', 'spki.der', '-out', 'spki.pem'], {
      cwd: dir,
      check: true,
    });
    const verify = await runCommand(
      'openssl',
      ['dgst', '-sha256', '-verify', 'spki.pem', '-signature', 'sig.der', 'bytes.txt'],
      { cwd: dir },
    );
    expect(verify.stdout.trim()).toBe('Verified OK');
    expect(verify.code).toBe(0);
    writeFileSync(path.join(dir, 'bytes.txt'), bytes.replace('docstore:443', 'docstore:444'));
    const tampered = await runCommand(
      'openssl',
      ['dgst', '-sha256', '-verify', 'spki.pem', '-signature', 'sig.der', 'bytes.txt'],
      { cwd: dir },
    );
    expect(tampered.code).not.toBe(0);
  });

  it('a scope refresh widens the scope and keeps the grants it covered valid', async () => {
    const [before] = await scopeRows('org-alice', 'docstore:443');
    const refresh = await expectExit(0, [
      'grant-principal-scope',
      'org-alice',
      'docstore',
      '--valid-days',
      '60',
    ]);
    expect(refresh.stdout).toMatch(/docstore:443: extended/);
    const after = await scopeRows('org-alice', 'docstore:443');
    expect(after).toHaveLength(1);
    // The original moved not_before to now(), past the permission's not_before: scope_window_too_narrow.
    expect(after[0]!.nb).toBe(before!.nb);
    expect(parseTimestamp(after[0]!.na)).toBeGreaterThan(parseTimestamp(before!.na));

    const shorter = await expectExit(0, [
      'grant-principal-scope',
      'org-alice',
      'docstore',
      '--valid-days',
      '1',
    ]);
    expect(shorter.stdout).toMatch(/docstore:443: unchanged/);
    expect((await scopeRows('org-alice', 'docstore:443'))[0]!.na).toBe(after[0]!.na);

    await expectExit(0, ['agent-permissions', 'check', 'agent-alpha', agentPem, 'docstore']);
  });

  it('grant accepts the agent key as a certificate file and as hex, and renews an id with a new signed row', async () => {
    const cert = await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-beta',
      betaCertPem,
      'messaging:8443',
      '5',
      'perm-beta-1',
    ]);
    expect(cert.stdout).toMatch(/created permission perm-beta-1/);
    const stored = await db.query(
      'SELECT subject_public_key_spki_der FROM permission_registry WHERE permission_id = $1',
      ['perm-beta-1'],
    );
    expect((stored.rows[0].subject_public_key_spki_der as Buffer).equals(betaSpki)).toBe(true);

    const renewed = await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-beta',
      betaSpki.toString('hex'),
      'messaging:8443',
      '7',
      'perm-beta-1',
    ]);
    // A signed row never changes (migrations/0005): the renewal is a new row, the old one is revoked.
    const renewal =
      /renewed permission perm-beta-1 as (perm-[0-9a-f-]{36}): agent-beta -> messaging:8443/.exec(
        renewed.stdout,
      );
    expect(renewal, renewed.stdout).not.toBeNull();
    betaPermission = renewal![1]!;
    expect(renewed.stdout).toMatch(/perm-beta-1 revoked at \S+: a signed row never changes/);
    const rows = await db.query<{ id: string; revoked: boolean }>(
      `SELECT permission_id AS id, revoked_at IS NOT NULL AS revoked FROM permission_registry
       WHERE subject_identity = 'agent-beta' ORDER BY permission_id = 'perm-beta-1' DESC`,
    );
    expect(rows.rows).toEqual([
      { id: 'perm-beta-1', revoked: true },
      { id: betaPermission, revoked: false },
    ]);
    await expectExit(0, ['agent-permissions', 'check', 'agent-beta', betaCertPem, 'messaging:8443']);
  });

  it('a grant next to an active row for the same identity, key and destination names that row', async () => {
    const existing = (
      await db.query<{ na: string }>(
        `SELECT ${ts('not_after')} AS na FROM permission_registry WHERE permission_id = $1`,
        [betaPermission],
      )
    ).rows[0]!.na;
    // Shorter than the renewed row (7 days): the older row keeps allowing access after the new one ends.
    const shorter = await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-beta',
      betaCertPem,
      'messaging:8443',
      '2',
    ]);
    const newId = /created permission (perm-[0-9a-f-]{36}):/.exec(shorter.stdout)?.[1];
    expect(newId).toBeDefined();
    expect(shorter.stderr).toContain(
      `note: agent-beta -> messaging:8443 with this agent key already has an active permission: ` +
        `${betaPermission} (not_after ${existing}); it stays in force next to ${newId}`,
    );
    expect(shorter.stderr).toContain(
      `${betaPermission} ends later: it keeps allowing access until ${existing}`,
    );
    expect(shorter.stderr).toMatch(/renew a row by passing its PERMISSION_ID/);

    // Renewing that row by id names the other row, not itself; --json lists it too.
    const renewed = await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-beta',
      betaCertPem,
      'messaging:8443',
      '7',
      betaPermission,
      '--json',
    ]);
    const json = JSON.parse(renewed.stdout) as {
      permission_id: string;
      action: string;
      renews: string;
      other_active_permissions: unknown[];
    };
    expect(json.action).toBe('renewed');
    expect(json.renews).toBe(betaPermission);
    expect(json.permission_id).not.toBe(betaPermission);
    betaPermission = json.permission_id;
    expect(json.other_active_permissions).toEqual([{ permission_id: newId, not_after: expect.any(String) }]);
    expect(renewed.stderr).toMatch(new RegExp(`already has an active permission: ${newId} \\(not_after `));
    expect(renewed.stderr).not.toMatch(/ends later/);

    // Another identity or key for the same destination is not the same grant: no note.
    const other = await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-beta',
      agentPem,
      'messaging:8443',
      '1',
    ]);
    expect(other.stderr).not.toMatch(/already has/);
    await db.query(
      `UPDATE permission_registry SET revoked_at = now()
       WHERE subject_identity = 'agent-beta' AND permission_id <> $1 AND revoked_at IS NULL`,
      [betaPermission],
    );
  });

  describe('refusals leave the registry unchanged (exit 1)', () => {
    const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
      type: 'spki',
      format: 'der',
    });

    beforeAll(async () => {
      for (const key of ['org-revoked', 'org-expired']) {
        await expectExit(0, ['register-principal-key', key]);
        await expectExit(0, ['grant-principal-scope', key, 'docstore']);
      }
      await db.query(`UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = 'org-revoked'`);
      await db.query(
        `UPDATE principal_signing_keys SET not_before = now() - interval '10 days', not_after = now() - interval '1 day'
         WHERE key_id = 'org-expired'`,
      );
    });

    const spki = () => agentSpki.toString('hex');
    it.each([
      [
        'a destination outside the signer scope',
        () => ['org-alice', 'agent-alpha', spki(), 'api.example.com'],
        /outside the scope of principal key org-alice/,
      ],
      [
        'a window outside the scope window',
        () => ['org-alice', 'agent-alpha', spki(), 'docstore', '400'],
        /outside the scope window.*at most 5\d/,
      ],
      [
        'an unregistered signer',
        () => ['org-nobody', 'agent-alpha', spki(), 'docstore'],
        /org-nobody is not registered/,
      ],
      [
        'a revoked signer',
        () => ['org-revoked', 'agent-alpha', spki(), 'docstore'],
        /org-revoked was revoked/,
      ],
      [
        'an expired signer',
        () => ['org-expired', 'agent-alpha', spki(), 'docstore'],
        /org-expired expired at/,
      ],
      ['a P-384 agent key', () => ['org-alice', 'agent-alpha', p384.toString('hex'), 'docstore'], /P-256/],
      ['an RSA agent key', () => ['org-alice', 'agent-alpha', rsa.toString('hex'), 'docstore'], /P-256/],
      [
        'an id that names another grant',
        () => ['org-alice', 'agent-alpha', spki(), 'messaging:8443', '5', betaPermission],
        /perm-[0-9a-f-]{36} already grants agent-beta/,
      ],
    ])('%s', async (_name, args, message) => {
      const before = await snapshot();
      const r = await expectExit(1, ['agent-permissions', 'grant', ...args()]);
      expect(r.stderr).toMatch(/^refused: /);
      expect(r.stderr).toMatch(message);
      expect(await snapshot()).toBe(before);
    });

    it('scope for an unregistered or revoked key', async () => {
      const before = await snapshot();
      expect((await expectExit(1, ['grant-principal-scope', 'org-nobody', 'docstore'])).stderr).toMatch(
        /not registered/,
      );
      expect((await expectExit(1, ['grant-principal-scope', 'org-revoked', 'docstore'])).stderr).toMatch(
        /revoked/,
      );
      expect((await expectExit(1, ['register-principal-key', 'org-revoked'])).stderr).toMatch(/revoked/);
      expect(await snapshot()).toBe(before);
    });
  });

  it('malformed arguments are usage errors (exit 2) in every command, and change nothing', async () => {
    const spki = agentSpki.toString('hex');
    const before = await snapshot();
    const cases: [string[], RegExp][] = [
      [['agent-permissions', 'grant', 'org-alice', 'agent-alpha', spki, 'docstore:0'], /invalid destination/],
      [['agent-permissions', 'grant', 'org-alice', 'agent-alpha', spki, '127.1'], /invalid destination/],
      [['grant-principal-scope', 'org-alice', 'docstore', 'bad host'], /invalid destination/],
      [['agent-permissions', 'check', 'agent-alpha', spki, 'docstore:99999'], /invalid destination/],
      [
        ['agent-permissions', 'delete', 'agent-alpha', spki, '--destination', 'docstore:0'],
        /invalid destination/,
      ],
      [
        ['agent-permissions', 'grant', 'org-alice', 'agent-alpha\nsubject_identity=x', spki, 'docstore'],
        /SUBJECT_IDENTITY.*control character/,
      ],
      [
        ['agent-permissions', 'grant', 'org-alice', 'agent\u001balpha', spki, 'docstore'],
        /control character/,
      ],
      [
        ['agent-permissions', 'grant', 'org-alice', 'agent-alpha', spki, 'docstore', '5', 'perm\r1'],
        /PERMISSION_ID.*control character/,
      ],
      [['register-principal-key', 'org carol'], /KEY_ID "org carol" contains U\+0020/],
      [['register-principal-key', 'org-carol\n'], /KEY_ID "org-carol\\n" contains U\+000A/],
      [['grant-principal-scope', 'org\talice', 'docstore'], /KEY_ID "org\\talice" contains U\+0009/],
      [
        ['agent-permissions', 'grant', 'org-alice ', 'agent-alpha', spki, 'docstore'],
        /KEY_ID "org-alice " contains U\+0020/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await expectExit(2, args);
      expect(r.stderr).toMatch(/^error: /);
      expect(r.stderr).toMatch(message);
    }
    expect(await snapshot()).toBe(before);
    expect(tokenContents().keys).not.toContain('org carol');
  });

  it('a wrong PIN is an environment error (exit 2) that says so, and changes nothing', async () => {
    const before = await snapshot();
    const grant = await expectExit(
      2,
      ['agent-permissions', 'grant', 'org-alice', 'agent-alpha', agentPem, 'messaging:8443', '5'],
      { AGENT_GATEWAY_TPM_USER_PIN: 'not-the-pin' },
    );
    // The TPM counted the failure (the test TPM forgives one failure every 10 s; this reads right away).
    expect(await lockoutCounter()).toBeGreaterThan(0);
    expect(grant.stderr).toMatch(
      /^error: TPM: wrong user PIN for token "agent-gateway" \(AGENT_GATEWAY_TPM_USER_PIN\); the TPM's dictionary-attack counter was incremented: repeated wrong PINs lock the key/m,
    );
    // As registry-cli/README.md says: tpm2-pkcs11's own ERROR lines always appear, the TSS's (esys) do not.
    expect(grant.stderr).toMatch(/^ERROR: Esys_Unseal: .*DA counter incremented$/m);
    expect(grant.stderr).not.toMatch(/:esys:/);
    const register = await expectExit(2, ['register-principal-key', 'org-carol'], {
      AGENT_GATEWAY_TPM_USER_PIN: 'not-the-pin',
    });
    expect(register.stderr).toMatch(/wrong user PIN.*dictionary-attack counter was incremented/);
    // With TSS2_LOG set, the TSS's diagnostics show too.
    const verbose = await expectExit(2, ['register-principal-key', 'org-alice'], {
      AGENT_GATEWAY_TPM_USER_PIN: 'not-the-pin',
      TSS2_LOG: 'all+error',
    });
    expect(verbose.stderr).toMatch(/^ERROR:esys:/m);
    expect(await snapshot()).toBe(before);
  });

  it('a missing token is named (exit 2)', async () => {
    const r = await expectExit(
      2,
      ['agent-permissions', 'grant', 'org-alice', 'agent-alpha', agentPem, 'messaging:8443', '5'],
      {
        AGENT_GATEWAY_TPM_TOKEN_LABEL: 'no-such-token',
      },
    );
    expect(r.stderr).toMatch(/token "no-such-token" not found/);
  });

  it('an unreachable database is named (exit 2) by every command', async () => {
    const port = await freePort();
    const down = { AGENT_GATEWAY_DATABASE_URL: `postgresql://postgres:secret@127.0.0.1:${port}/registry` };
    for (const args of [
      ['migrate'],
      ['register-principal-key', 'org-alice'],
      ['grant-principal-scope', 'org-alice', 'docstore'],
      ['agent-permissions', 'grant', 'org-alice', 'agent-alpha', agentPem, 'docstore'],
      ['agent-permissions', 'delete', 'agent-alpha', agentPem],
      ['agent-permissions', 'list'],
      ['agent-permissions', 'check', 'agent-alpha', agentPem, 'docstore'],
    ]) {
      const r = await expectExit(2, args, down);
      expect(r.stderr).toContain(`database at 127.0.0.1:${port}/registry (AGENT_GATEWAY_DATABASE_URL)`);
      expect(r.stderr).not.toContain('secret');
    }
  });

  it('DATABASE_URL works when AGENT_GATEWAY_DATABASE_URL is unset', async () => {
    const r = await expectExit(0, ['agent-permissions', 'list', '--json'], {
      AGENT_GATEWAY_DATABASE_URL: undefined,
      DATABASE_URL: databaseUrl,
    });
    expect(JSON.parse(r.stdout).permissions.length).toBeGreaterThan(0);
  });

  it('delete revokes (never deletes); check then denies with permission_revoked', async () => {
    await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-alpha',
      agentPem,
      'messaging:8443',
      '5',
    ]);
    const count = async () =>
      (await db.query('SELECT count(*)::int AS n FROM permission_registry')).rows[0].n as number;
    const rowsBefore = await count();

    const one = await expectExit(0, [
      'agent-permissions',
      'delete',
      'agent-alpha',
      agentPem,
      '--destination',
      'DocStore',
    ]);
    expect(one.stdout).toMatch(/^revoked 1 permission of agent-alpha/);
    expect(one.stdout).toContain(alphaPermission);
    await expectExit(0, ['agent-permissions', 'check', 'agent-alpha', agentPem, 'messaging:8443']);

    const denied = await expectExit(1, ['agent-permissions', 'check', 'agent-alpha', agentPem, 'docstore']);
    expect(denied.stdout).toMatch(/^deny: permission_revoked: /);
    expect(denied.stdout).toMatch(
      new RegExp(`${alphaPermission} signed by org-alice, .*: deny permission_revoked`),
    );

    const rest = await expectExit(0, ['agent-permissions', 'delete', 'agent-alpha', agentPem, '--json']);
    expect(JSON.parse(rest.stdout)).toMatchObject({ revoked: 1, already_revoked: 1 });

    // Re-running is idempotent (exit 0) and says the rows were already revoked; --expect-some exits 1.
    const again = await expectExit(0, ['agent-permissions', 'delete', 'agent-alpha', agentPem]);
    expect(again.stdout).toMatch(
      /^revoked 0 permissions: the 2 permissions of agent-alpha \(agent public key sha256 [0-9a-f]{64}\) were already revoked$/m,
    );
    expect(again.stderr).toBe('');
    const expectSome = await expectExit(1, [
      'agent-permissions',
      'delete',
      'agent-alpha',
      agentPem,
      '--expect-some',
      '--json',
    ]);
    expect(JSON.parse(expectSome.stdout)).toEqual({ revoked: 0, already_revoked: 2, permissions: [] });

    // A likely typo: nothing matches at all. Still exit 0 by default, with a note; 1 with --expect-some.
    const typo = await expectExit(0, ['agent-permissions', 'delete', 'agent-alpah', agentPem]);
    expect(typo.stdout).toMatch(
      /^revoked 0 permissions: no permission of agent-alpah .* exists, revoked or not$/m,
    );
    expect(typo.stderr).toMatch(
      /^note: nothing in the registry matches identity "agent-alpah" with this agent key: check them for a typo \(--expect-some makes this exit 1\)/,
    );
    const typoStrict = await expectExit(1, [
      'agent-permissions',
      'delete',
      'agent-alpah',
      agentPem,
      '--expect-some',
    ]);
    expect(typoStrict.stderr).toMatch(/^note: nothing in the registry matches/);
    const otherDest = await expectExit(0, [
      'agent-permissions',
      'delete',
      'agent-alpha',
      agentPem,
      '--destination',
      'never-granted.example',
      '--json',
    ]);
    expect(JSON.parse(otherDest.stdout)).toEqual({ revoked: 0, already_revoked: 0, permissions: [] });
    expect(otherDest.stderr).toMatch(/with this agent key and never-granted\.example:443: check them/);

    expect(await count()).toBe(rowsBefore);
    const active = await db.query(
      `SELECT count(*)::int AS n FROM permission_registry WHERE subject_identity = 'agent-alpha' AND revoked_at IS NULL`,
    );
    expect(active.rows[0].n).toBe(0);

    // A revoked id is history: it cannot be granted again.
    const reuse = await expectExit(1, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-alpha',
      agentPem,
      'docstore',
      '5',
      alphaPermission,
    ]);
    expect(reuse.stderr).toMatch(/was revoked at/);
  });

  it('check says no_permission for a triple with no rows, and exits 2 on an unusable destination', async () => {
    const r = await expectExit(1, [
      'agent-permissions',
      'check',
      'agent-gamma',
      agentPem,
      'docstore',
      '--json',
    ]);
    expect(JSON.parse(r.stdout)).toMatchObject({ decision: 'deny', reason: 'no_permission', rows: [] });
    await expectExit(2, ['agent-permissions', 'check', 'agent-alpha', agentPem, 'docstore:99999']);
  });

  it('list shows every row with its state', async () => {
    const r = await expectExit(0, ['agent-permissions', 'list', '--json']);
    const list = JSON.parse(r.stdout) as { permissions: { permission_id: string; state: string }[] };
    const states = Object.fromEntries(list.permissions.map((p) => [p.permission_id, p.state]));
    expect(states[alphaPermission]).toBe('revoked');
    expect(states['perm-beta-1']).toBe('revoked');
    expect(states[betaPermission]).toBe('active');
    const beta = await expectExit(0, ['agent-permissions', 'list', '--identity', 'agent-beta']);
    expect(beta.stdout.split('\n')[0]).toMatch(/^IDENTITY\s+DESTINATION\s+STATE/);
    expect(beta.stdout).toContain(betaPermission);
    expect(beta.stdout).toMatch(/agent-beta\s+messaging:8443\s+active\s+perm-/);
    expect(beta.stdout).not.toMatch(/agent-alpha/);
  });
});
