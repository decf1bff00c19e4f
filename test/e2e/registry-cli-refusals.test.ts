// The registry CLI end to end, refusals (test/support/registry-cli-suite.ts): what it refuses (exit 1) and
// calls a usage or environment error (exit 2) — changing nothing — with a key in a real swtpm through real
// tpm2-pkcs11 and a real PostgreSQL, seeded with grants by the CLI itself. Granting is in
// registry-cli-grant.test.ts, revocation in registry-cli-revoke.test.ts.
import { generateKeyPairSync } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../dev-support/ports.js';
import {
  agentPem,
  agentSpki,
  db,
  expectExit,
  lockoutCounter,
  registryCliSuite,
  seedGrants,
  snapshot,
  tokenContents,
} from '../support/registry-cli-suite.js';

registryCliSuite('registry_cli_refusals', { migrated: true });

describe('registry CLI end to end', () => {
  /** agent-beta's active row. */
  let betaPermission: string;

  beforeAll(async () => {
    ({ betaPermission } = await seedGrants());
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
});
