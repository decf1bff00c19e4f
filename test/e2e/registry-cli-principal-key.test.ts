// The registry CLI end to end, principal keys (test/support/registry-cli-suite.ts): `migrate`, the shell
// wrappers, and register-principal-key creating, refreshing and replacing a key in a real swtpm through real
// tpm2-pkcs11, against a real PostgreSQL that starts without the registry schema. The steps build on each
// other, so they run in order. Granting is in registry-cli-grant.test.ts.
import { generateKeyPairSync } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import { parseTimestamp } from '../../core/timestamp.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import { readPublicSpki } from '../../dev-support/swtpm.js';
import {
  agentPem,
  db,
  env,
  expectExit,
  registryCliSuite,
  scopeRows,
  snapshot,
  TOKEN,
  tokenContents,
  tpm,
  ts,
  USER_PIN,
  work,
} from '../support/registry-cli-suite.js';

registryCliSuite('registry_cli_principal_key', { migrated: false });

/**
 * As if the TPM had been reset: the registered key is not the one in the token any more. The swap is
 * made with migrations/0008's trigger off, so the token's key is not recorded as retired by it (the
 * simulation, not a replacement, changed the row) and --replace may register it again.
 */
async function swapKeyBehindTheCli(keyId: string, spki: Buffer): Promise<void> {
  await db.query('BEGIN');
  try {
    await db.query('ALTER TABLE principal_signing_keys DISABLE TRIGGER principal_signing_keys_retire');
    await db.query('UPDATE principal_signing_keys SET public_key_spki_der = $1 WHERE key_id = $2', [
      spki,
      keyId,
    ]);
    await db.query('ALTER TABLE principal_signing_keys ENABLE ALWAYS TRIGGER principal_signing_keys_retire');
    await db.query('COMMIT');
  } catch (err) {
    await db.query('ROLLBACK');
    throw err;
  }
}

describe('registry CLI end to end', () => {
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
    await swapKeyBehindTheCli('org-alice', stranger);
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
    await swapKeyBehindTheCli('org-erin', stranger);
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
    await swapKeyBehindTheCli('org-erin', stranger);
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
});
