// The registry CLI end to end, granting (test/support/registry-cli-suite.ts): grant-principal-scope and
// agent-permissions grant signing rows with a key in a real swtpm through real tpm2-pkcs11, into a real
// PostgreSQL; the signature checked with openssl; renewals. The steps build on each other, so they run in
// order. Principal keys are in registry-cli-principal-key.test.ts, refusals in
// registry-cli-refusals.test.ts, revocation in registry-cli-revoke.test.ts.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import {
  agentPem,
  agentSpki,
  betaCertPem,
  betaSpki,
  db,
  env,
  expectExit,
  registryCliSuite,
  scopeRows,
  ts,
  work,
} from '../support/registry-cli-suite.js';

registryCliSuite('registry_cli_grant', { migrated: true });

describe('registry CLI end to end', () => {
  let alphaPermission: string;
  /** agent-beta's active row: each renewal is a new row under a new id. */
  let betaPermission: string;

  beforeAll(async () => {
    await expectExit(0, ['register-principal-key', 'org-alice']);
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
});
