// The registry CLI end to end, revocation (test/support/registry-cli-suite.ts): agent-permissions delete
// revoking (never deleting) rows signed with a key in a real swtpm, check and list reading them back, in a
// real PostgreSQL seeded with grants by the CLI itself. The steps build on each other, so they run in
// order. Granting is in registry-cli-grant.test.ts, refusals in registry-cli-refusals.test.ts.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  agentPem,
  databaseUrl,
  db,
  expectExit,
  registryCliSuite,
  seedGrants,
} from '../support/registry-cli-suite.js';

registryCliSuite('registry_cli_revoke', { migrated: true });

describe('registry CLI end to end', () => {
  let alphaPermission: string;
  /** agent-beta's active row. */
  let betaPermission: string;

  beforeAll(async () => {
    ({ alphaPermission, betaPermission } = await seedGrants());
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
