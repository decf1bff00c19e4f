// The registry CLI's root of trust end to end (issue #15, docs/contract.md "Root of trust"): init-root in a
// real swtpm through tpm2-pkcs11, rooted registration and delegation verified with core's query and
// policy under the root's SPKI, refusals of non-nesting windows and bad input, `check`'s chain, and
// root-sign-pending migrating and rotating a registry. The steps build on each other and run in order.
import { createHash, generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { spkiToPem } from '../../core/spki-input.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import {
  expectExitAnswering,
  gatewayDecision,
  initRoot,
  type Root,
  rootColumns,
  rootKeyId,
  rootsOf,
} from '../support/registry-cli-root.js';
import {
  agentPem,
  agentSpki,
  db,
  expectExit,
  registryCliSuite,
  snapshot,
  work,
} from '../support/registry-cli-suite.js';

registryCliSuite('registry_cli_root', { migrated: true });

let rootA: Root;
let rootB: Root;
const deny = (d: { allow: boolean; reason?: string }) => (d.allow ? 'allow' : d.reason);

describe('registry CLI root of trust', () => {
  it('init-root creates a root key and prints its id and the trust_roots line', async () => {
    rootA = await initRoot('registry-root');
    expect(rootA.id).toBe(rootKeyId(rootA.spkiDer));
    expect(rootA.stdout).toMatch(/created TPM token and key in token "agent-gateway"/);
    expect(rootA.stdout).toMatch(/recorded in registry_root_keys/);
    const again = await initRoot('registry-root');
    expect(again.id).toBe(rootA.id);
    expect(again.stdout).toMatch(/existing TPM key/);
  });

  it('refuses malformed and unknown root ids before changing anything (exit 2)', async () => {
    const before = await snapshot();
    const bad = await expectExit(2, ['register-principal-key', 'org-alice', '--root-key', 'registry-root']);
    expect(bad.stderr).toMatch(/--root-key must be a root key id, "sha256:" and 64 lowercase hex digits/);
    const absent = `sha256:${'0'.repeat(64)}`;
    const missing = await expectExit(2, ['register-principal-key', 'org-alice', '--root-key', absent]);
    expect(missing.stderr).toContain(`root key ${absent} is not in token "agent-gateway"`);
    expect(missing.stderr).toContain(`registry-root (${rootA.id})`);
    await expectExit(2, ['root-sign-pending']); // --root-key is required
    expect(await snapshot()).toBe(before);
  });

  it('rooted registration and scope verify under the root, and only under it', async () => {
    const reg = await expectExit(0, ['register-principal-key', 'org-alice', '--root-key', rootA.id]);
    expect(reg.stdout).toContain(`signed by root ${rootA.id}`);
    await expectExit(0, ['grant-principal-scope', 'org-alice', 'docstore', '--root-key', rootA.id]);
    await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-alpha',
      agentPem,
      'docstore',
      '10',
    ]);
    expect(deny(await gatewayDecision('agent-alpha', agentSpki, 'docstore:443', rootsOf(rootA)))).toBe(
      'allow',
    );
    const other = { ...rootA, id: rootKeyId(agentSpki), spkiDer: agentSpki };
    expect(deny(await gatewayDecision('agent-alpha', agentSpki, 'docstore:443', rootsOf(other)))).toBe(
      'signer_not_rooted',
    );
  });

  it('refuses a scope outlasting its key and a permission outlasting its scope, naming both windows', async () => {
    const before = await snapshot();
    const scope = await expectExit(1, [
      'grant-principal-scope',
      'org-alice',
      'messaging:8443',
      '--valid-days',
      '1000',
      '--root-key',
      rootA.id,
    ]);
    expect(scope.stderr).toMatch(
      /scope org-alice -> messaging:8443 window \S+ \.\. \S+ is not within principal key org-alice window \S+ \.\. \S+/,
    );
    const perm = await expectExit(1, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-alpha',
      agentPem,
      'docstore',
      '400',
    ]);
    expect(perm.stderr).toMatch(/the grant window \S+ \.\. \S+ is outside the scope window \S+ \.\. \S+/);
    expect(await snapshot()).toBe(before);
  });

  it('check explains the chain for a rooted, an unrooted-key and an unrooted-scope case', async () => {
    const ok = await expectExit(0, [
      'agent-permissions',
      'check',
      'agent-alpha',
      agentPem,
      'docstore',
      '--trust-root',
      rootA.base64,
    ]);
    expect(ok.stdout).toContain(
      `root -> key: principal key org-alice: ok: signed by root ${rootA.id}: valid`,
    );
    expect(ok.stdout).toMatch(/key -> scope: scope \d+ \(org-alice -> docstore:443\): ok: signed by root/);
    expect(ok.stdout).toMatch(
      /scope -> permission: permission perm-\S+: ok: signed by principal key org-alice/,
    );

    // An unrooted scope of a rooted key.
    await expectExit(0, ['grant-principal-scope', 'org-alice', 'messaging:8443', '--valid-days', '30']);
    await expectExit(0, [
      'agent-permissions',
      'grant',
      'org-alice',
      'agent-alpha',
      agentPem,
      'messaging:8443',
      '5',
    ]);
    const noScope = await expectExit(1, [
      'agent-permissions',
      'check',
      'agent-alpha',
      agentPem,
      'messaging:8443',
      '--trust-root',
      rootA.base64,
    ]);
    expect(noScope.stdout).toMatch(/^deny: scope_not_rooted: /);
    expect(noScope.stdout).toMatch(
      /key -> scope: scope \d+ \(org-alice -> messaging:8443\): FAILS: no root signature/,
    );
    // Without roots the same row is allowed, as before the root of trust.
    await expectExit(0, ['agent-permissions', 'check', 'agent-alpha', agentPem, 'messaging:8443']);

    // An unrooted key.
    await expectExit(0, ['register-principal-key', 'org-bob']);
    await expectExit(0, ['grant-principal-scope', 'org-bob', 'search', '--valid-days', '30']);
    await expectExit(0, ['agent-permissions', 'grant', 'org-bob', 'agent-alpha', agentPem, 'search', '5']);
    const noKey = await expectExit(1, [
      'agent-permissions',
      'check',
      'agent-alpha',
      agentPem,
      'search',
      '--trust-root',
      rootA.base64,
      '--json',
    ]);
    const json = JSON.parse(noKey.stdout) as {
      reason: string;
      rows: { chain: { link: string; valid: boolean; why: string }[] }[];
    };
    expect(json.reason).toBe('signer_not_rooted');
    expect(json.rows[0]!.chain[0]).toMatchObject({
      link: 'root -> key',
      valid: false,
      why: 'no root signature',
    });
  });

  it("check --config judges with a gateway config file's trust roots, whatever its database URL", async () => {
    // The gateway's own example config, its database URL in a variable the admin's shell does not have.
    const example = readFileSync(path.join(repoRoot, 'config.example.toml'), 'utf8');
    const config = (roots: string, files: string) => {
      const file = path.join(work, `gateway-${Math.random().toString(36).slice(2)}.toml`);
      const text = example
        .replace(/^database_url_env = .*$/m, 'database_url_env = "AGW_GATEWAY_ONLY_DATABASE_URL"')
        .replace(/^trust_roots = \[\]$/m, `trust_roots = ${roots}`)
        .replace(/^trust_root_files = \[\]$/m, `trust_root_files = ${files}`);
      expect(text).not.toBe(example);
      writeFileSync(file, text);
      return file;
    };
    const check = (code: number, file: string) =>
      expectExit(code, ['agent-permissions', 'check', 'agent-alpha', agentPem, 'docstore', '--config', file]);
    const pem = path.join(work, 'root-a.pem');
    writeFileSync(pem, spkiToPem(rootA.spkiDer));
    for (const file of [config(`["${rootA.base64}"]`, '[]'), config('[]', JSON.stringify([pem]))]) {
      const ok = await check(0, file);
      expect(ok.stdout).toContain(`  trust roots: ${rootA.id}\n`);
      expect(ok.stdout).toContain(
        `root -> key: principal key org-alice: ok: signed by root ${rootA.id}: valid`,
      );
    }
    // A root the rows are not signed by: the same denial the gateway would give.
    const other = spkiToPem(agentSpki);
    writeFileSync(pem, other);
    const denied = await check(1, config('[]', JSON.stringify([pem])));
    expect(denied.stdout).toMatch(
      /^deny: signer_not_rooted: signing key org-alice is signed by root sha256:/,
    );
    // What the gateway refuses to start with, check refuses too, naming the entry.
    const bad = await check(2, config('["bm90IGEga2V5"]', '[]'));
    expect(bad.stderr).toContain('policy.trust_roots[0]');
    const typo = path.join(work, 'gateway-typo.toml');
    writeFileSync(typo, example.replace(/^trust_roots = \[\]$/m, `trust_root = ["${rootA.base64}"]`));
    expect((await check(2, typo)).stderr).toContain('policy.trust_root: unknown key');
  });

  it('root-sign-pending lists unvouched rows with their key fingerprints and signs them only when told', async () => {
    const before = await snapshot();
    const bobKey = await db.query<{ spki: Buffer }>(
      `SELECT public_key_spki_der AS spki FROM principal_signing_keys WHERE key_id = 'org-bob'`,
    );
    const bobFingerprint = `sha256:${createHash('sha256')
      .update(bobKey.rows[0]?.spki ?? '')
      .digest('hex')}`;
    const plain = await expectExit(1, ['root-sign-pending', '--root-key', rootA.id, '--yes']);
    const listed = plain.stdout.split('\n').filter((l) => /^ {2}(key|scope) /.test(l));
    expect(listed).toHaveLength(3);
    expect(listed[0]).toMatch(
      new RegExp(`^ {2}key org-bob, public key ${bobFingerprint}, .* \\(unvouched: unsigned\\)$`),
    );
    expect(
      listed
        .slice(1)
        .map((l) => / -> (\S+),/.exec(l)?.[1])
        .sort(),
    ).toEqual(['messaging:8443', 'search:443']);
    expect(plain.stdout).toContain('3 unvouched rows will not be signed');
    expect(plain.stderr).toMatch(/nothing signed/);
    expect(await snapshot()).toBe(before);

    const no = await expectExitAnswering(
      1,
      ['root-sign-pending', '--root-key', rootA.id, '--sign-unvouched'],
      'n\n',
    );
    expect(no.stderr).toMatch(/nothing signed/);
    expect(await snapshot()).toBe(before);

    const yes = await expectExitAnswering(
      0,
      ['root-sign-pending', '--root-key', rootA.id, '--sign-unvouched'],
      'y\n',
    );
    expect(yes.stdout).toContain(`signed 1 key and 2 scope rows with root ${rootA.id}`);
    for (const dest of ['messaging:8443', 'search:443'])
      expect(deny(await gatewayDecision('agent-alpha', agentSpki, dest, rootsOf(rootA)))).toBe('allow');
    const nothing = await expectExit(0, ['root-sign-pending', '--root-key', rootA.id]);
    expect(nothing.stdout).toMatch(/nothing to sign/);
  });

  it('rotation: root B re-signs only the rows whose signature verifies under A, never a forged one', async () => {
    rootB = await initRoot('registry-root-b');
    expect(rootB.id).not.toBe(rootA.id);
    // The attack: someone who can write the registry adds a key and a scope that claim root A, with a
    // signature copied from a real row. Listed by its columns alone they look like A's rows.
    const alice = await db.query<{ sig: Buffer }>(
      `SELECT root_signature AS sig FROM principal_signing_keys WHERE key_id = 'org-alice'`,
    );
    const forgedSpki = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    await db.query(
      `INSERT INTO principal_signing_keys (key_id, algorithm, public_key_spki_der, not_before, not_after,
         root_key_id, root_signature)
       VALUES ('org-mallory', 'ecdsa_p256_sha256', $1, now(), now() + interval '30 days', $2, $3)`,
      [forgedSpki, rootA.id, alice.rows[0]?.sig],
    );
    await db.query(
      `INSERT INTO principal_key_permissions (signing_key_id, destination, not_before, not_after,
         root_key_id, root_signature)
       SELECT 'org-mallory', 'search:443', now(), now() + interval '20 days', root_key_id, root_signature
       FROM principal_key_permissions WHERE signing_key_id = 'org-alice' LIMIT 1`,
    );

    // Without a root to vouch for them every row is unvouched: nothing is signed.
    const blind = await expectExit(1, ['root-sign-pending', '--root-key', rootB.id, '--yes']);
    expect(blind.stdout).toContain(
      `(not signed: claims root ${rootA.id}, not one you named (name it to re-sign what it signed))`,
    );
    expect(blind.stdout).toContain('7 rows are never signed by this command');

    const r = await expectExit(0, [
      'root-sign-pending',
      '--root-key',
      rootB.id,
      '--trust-root',
      rootA.base64,
      '--yes',
    ]);
    expect(r.stdout).toContain(`signed 2 key and 3 scope rows with root ${rootB.id}`);
    expect(r.stdout).toContain(`(vouched: ${rootA.id})`);
    const forged = r.stdout.split('\n').filter((l) => l.includes('org-mallory'));
    expect(forged).toHaveLength(2);
    for (const l of forged)
      expect(l).toContain(`(not signed: claims root ${rootA.id}, but its signature does not verify)`);
    expect(r.stdout).toContain('2 rows are never signed by this command');
    expect(r.stdout).not.toContain('unvouched rows will not be signed');
    expect(await rootColumns('org-mallory')).toEqual({
      key: rootA.id,
      scopes: [{ destination: 'search:443', root_key_id: rootA.id }],
    });
    // Not even --sign-unvouched signs a row whose signature claims a root and does not verify.
    const forced = await expectExit(1, [
      'root-sign-pending',
      '--root-key',
      rootB.id,
      '--sign-unvouched',
      '--yes',
    ]);
    expect(forced.stdout).toContain('2 rows are never signed by this command');
    expect((await rootColumns('org-mallory')).key).toBe(rootA.id);
    expect(await rootColumns('org-alice')).toEqual({
      key: rootB.id,
      scopes: [
        { destination: 'docstore:443', root_key_id: rootB.id },
        { destination: 'messaging:8443', root_key_id: rootB.id },
      ],
    });
    const d = (roots: Root[]) => gatewayDecision('agent-alpha', agentSpki, 'docstore:443', rootsOf(...roots));
    expect(deny(await d([rootA, rootB]))).toBe('allow');
    expect(deny(await d([rootB]))).toBe('allow');
    expect(deny(await d([rootA]))).toBe('signer_not_rooted');
    await db.query(
      `UPDATE principal_key_permissions SET revoked_at = now() WHERE signing_key_id = 'org-mallory'`,
    );
    await db.query(`UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = 'org-mallory'`);
  });

  it('--root-key signs only the end it was asked for, never one stretched in the database', async () => {
    const saved = await db.query<{ k: string; s: string }>(
      `SELECT k.not_after::text AS k, s.not_after::text AS s FROM principal_signing_keys k
       JOIN principal_key_permissions s ON s.signing_key_id = k.key_id AND s.destination = 'docstore:443'
       WHERE k.key_id = 'org-alice'`,
    );
    // Someone who can write the registry stretches the rooted key and its scope, then waits for the
    // next rooted refresh to vouch for the longer windows.
    await db.query(
      `UPDATE principal_signing_keys SET not_after = not_after + interval '5000 days' WHERE key_id = 'org-alice'`,
    );
    await db.query(
      `UPDATE principal_key_permissions SET not_after = not_after + interval '100 days'
       WHERE signing_key_id = 'org-alice' AND destination = 'docstore:443'`,
    );
    const before = await snapshot();
    const key = await expectExit(1, ['register-principal-key', 'org-alice', '--root-key', rootB.id]);
    expect(key.stderr).toMatch(
      /principal key org-alice window \S+ \.\. \S+ ends after the 365 days asked for \(\S+\), and no signature of this root covers that end; a root signs only the end you ask for: pass VALID_DAYS/,
    );
    const scope = await expectExit(1, [
      'grant-principal-scope',
      'org-alice',
      'docstore',
      '--valid-days',
      '10',
      '--root-key',
      rootB.id,
    ]);
    expect(scope.stderr).toMatch(
      /scope org-alice -> docstore:443 window \S+ \.\. \S+ ends after the 10 days asked for \(\S+\), and no signature of this root covers that end; a root signs only the end you ask for: pass --valid-days/,
    );
    expect(await snapshot()).toBe(before);
    await db.query(`UPDATE principal_signing_keys SET not_after = $1 WHERE key_id = 'org-alice'`, [
      saved.rows[0]?.k,
    ]);
    await db.query(
      `UPDATE principal_key_permissions SET not_after = $1
       WHERE signing_key_id = 'org-alice' AND destination = 'docstore:443'`,
      [saved.rows[0]?.s],
    );
    expect(deny(await gatewayDecision('agent-alpha', agentSpki, 'docstore:443', rootsOf(rootB)))).toBe(
      'allow',
    );
    // An end this root already signed is not a stretch: a rooted re-run asking for fewer days re-signs it.
    const rerun = await expectExit(0, [
      'grant-principal-scope',
      'org-alice',
      'docstore',
      '--valid-days',
      '10',
      '--root-key',
      rootB.id,
    ]);
    expect(rerun.stdout).toContain(`signed by root ${rootB.id}`);
    expect(deny(await gatewayDecision('agent-alpha', agentSpki, 'docstore:443', rootsOf(rootB)))).toBe(
      'allow',
    );
  });

  it('a rooted key is not refreshed without --root-key; root-withdraw clears a signature', async () => {
    const before = await snapshot();
    const refresh = await expectExit(1, ['register-principal-key', 'org-alice', '400']);
    expect(refresh.stderr).toContain(`signed by root ${rootB.id}`);
    expect(refresh.stderr).toContain(`--root-key ${rootB.id}`);
    expect(await snapshot()).toBe(before);

    const w = await expectExit(0, ['root-withdraw', '--key', 'org-bob']);
    expect(w.stdout).toContain(`withdrew the signature of root ${rootB.id} from principal key org-bob`);
    expect(deny(await gatewayDecision('agent-alpha', agentSpki, 'search:443', rootsOf(rootB)))).toBe(
      'signer_not_rooted',
    );
    await expectExit(2, ['root-withdraw', '--key', 'org-bob', '--scope', '1']);
  });
});
