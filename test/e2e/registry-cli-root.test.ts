// The registry CLI's root of trust end to end (issue #15, docs/contract.md "Root of trust"): init-root in a
// real swtpm through tpm2-pkcs11, rooted registration and delegation verified with core's query and
// policy under the root's SPKI, refusals of non-nesting windows and bad input, `check`'s chain, and
// root-sign-pending migrating and rotating a registry. The steps build on each other and run in order.
import { describe, expect, it } from 'vitest';
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
  expectExit,
  registryCliSuite,
  snapshot,
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

  it('root-sign-pending lists exactly the unsigned rows, asks, and signs them', async () => {
    const before = await snapshot();
    const no = await expectExitAnswering(1, ['root-sign-pending', '--root-key', rootA.id], 'n\n');
    const listed = no.stdout.split('\n').filter((l) => /^ {2}(key|scope) /.test(l));
    expect(listed).toHaveLength(3);
    expect(listed[0]).toMatch(/^ {2}key org-bob, .* \(unsigned\)$/);
    expect(
      listed
        .slice(1)
        .map((l) => / -> (\S+),/.exec(l)?.[1])
        .sort(),
    ).toEqual(['messaging:8443', 'search:443']);
    expect(no.stderr).toMatch(/nothing signed/);
    expect(await snapshot()).toBe(before);

    const yes = await expectExitAnswering(0, ['root-sign-pending', '--root-key', rootA.id], 'y\n');
    expect(yes.stdout).toContain(`signed 1 key and 2 scope rows with root ${rootA.id}`);
    for (const dest of ['messaging:8443', 'search:443'])
      expect(deny(await gatewayDecision('agent-alpha', agentSpki, dest, rootsOf(rootA)))).toBe('allow');
    const nothing = await expectExit(0, ['root-sign-pending', '--root-key', rootA.id, '--yes']);
    expect(nothing.stdout).toMatch(/nothing to sign/);
  });

  it('rotation: re-signing with root B replaces A, and the rows verify under B', async () => {
    rootB = await initRoot('registry-root-b');
    expect(rootB.id).not.toBe(rootA.id);
    const r = await expectExit(0, ['root-sign-pending', '--root-key', rootB.id, '--yes']);
    expect(r.stdout).toContain(`signed 2 key and 3 scope rows with root ${rootB.id}`);
    expect(r.stdout).toContain(`(signed by ${rootA.id})`);
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
