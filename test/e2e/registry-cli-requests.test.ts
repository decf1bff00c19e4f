// The registry CLI end to end, access requests (test/support/registry-cli-suite.ts): rows inserted into
// access_requests as the gateway writes them (id from core/access-request-id.ts), listed by `requests`,
// approved with a key in a real swtpm through real tpm2-pkcs11 (the grant code path: scope, the gateway's
// own query and policy), dismissed, in a real PostgreSQL; a registry below schema 7 is told to migrate.
// The steps build on each other, so they run in order.
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { accessRequestId } from '../../core/access-request-id.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { createDatabaseAtVersion, dropDatabase } from '../../dev-support/postgres.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import {
  agentPem,
  agentSpki,
  betaSpki,
  databaseUrl,
  db,
  env,
  expectExit,
  registryCliSuite,
  snapshot,
  ts,
} from '../support/registry-cli-suite.js';

registryCliSuite('registry_cli_requests', { migrated: true });

/** A row as the gateway's recording lane writes it after `count` denials. */
async function recordRequest(
  identity: string,
  spkiDer: Buffer,
  destination: string,
  opts: { count?: number; reason?: string; status?: string } = {},
): Promise<string> {
  const id = accessRequestId(identity, spkiDer, destination);
  await db.query(
    `INSERT INTO access_requests (request_id, subject_identity, subject_public_key_spki_der, subject_spki_sha256,
       destination, request_count, last_deny_reason, status, decided_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $8 = 'pending' THEN NULL ELSE now() END)`,
    [
      id,
      identity,
      spkiDer,
      createHash('sha256').update(spkiDer).digest('hex'),
      destination,
      opts.count ?? 1,
      opts.reason ?? 'no_permission',
      opts.status ?? 'pending',
    ],
  );
  return id;
}

async function requestRow(id: string) {
  const r = await db.query<{
    status: string;
    permission_id: string | null;
    decided_by: string | null;
    decided_at: string | null;
  }>(
    `SELECT status, permission_id, decided_by, ${ts('decided_at')} AS decided_at FROM access_requests
     WHERE request_id = $1`,
    [id],
  );
  return r.rows[0];
}

/** Everything a refused command must leave as it was: the registry and every access request. */
async function everything(): Promise<string> {
  const r = await db.query<{ row: string }>('SELECT t::text AS row FROM access_requests t ORDER BY 1');
  return `${await snapshot()}\naccess_requests:${r.rows.map((x) => x.row).join('|')}`;
}

describe('registry CLI access requests end to end', () => {
  let alphaDocstore: string;
  let alphaOutside: string;
  let betaMessaging: string;
  let betaDismissedEarlier: string;

  beforeAll(async () => {
    await expectExit(0, ['register-principal-key', 'org-alice']);
    await expectExit(0, [
      'grant-principal-scope',
      'org-alice',
      'docstore',
      'messaging:8443',
      '--valid-days',
      '60',
    ]);
    alphaDocstore = await recordRequest('agent-alpha', agentSpki, 'docstore:443', { count: 3 });
    alphaOutside = await recordRequest('agent-alpha', agentSpki, 'api.example.com:443', {
      reason: 'permission_expired',
    });
    betaMessaging = await recordRequest('agent-beta', betaSpki, 'messaging:8443');
    betaDismissedEarlier = await recordRequest('agent-beta', betaSpki, 'files:443', { status: 'dismissed' });
  });

  it('requests lists the pending requests as a table and as JSON; --all adds the decided ones', async () => {
    const table = await expectExit(0, ['agent-permissions', 'requests']);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(
      /^REQUEST_ID\s+IDENTITY\s+KEY_SHA256\s+DESTINATION\s+COUNT\s+FIRST_SEEN\s+LAST_SEEN\s+LAST_REASON\s+STATUS$/,
    );
    expect(lines).toHaveLength(4);
    const alphaLine = lines.find((l) => l.startsWith(alphaDocstore));
    const alphaSha = createHash('sha256').update(agentSpki).digest('hex');
    expect(alphaLine).toMatch(
      new RegExp(
        `^${alphaDocstore}\\s+agent-alpha\\s+${alphaSha.slice(0, 16)}\\s+docstore:443\\s+3\\s+\\S+\\s+\\S+\\s+no_permission\\s+pending$`,
      ),
    );
    expect(table.stdout).not.toContain(betaDismissedEarlier);

    const json = JSON.parse((await expectExit(0, ['agent-permissions', 'requests', '--json'])).stdout) as {
      requests: Record<string, unknown>[];
    };
    expect(json.requests.map((r) => r['request_id']).sort()).toEqual(
      [alphaDocstore, alphaOutside, betaMessaging].sort(),
    );
    expect(json.requests.find((r) => r['request_id'] === alphaOutside)).toMatchObject({
      subject_identity: 'agent-alpha',
      subject_public_key_spki_der: agentSpki.toString('hex'),
      subject_public_key_sha256: alphaSha,
      destination: 'api.example.com:443',
      request_count: 1,
      last_deny_reason: 'permission_expired',
      status: 'pending',
      permission_id: null,
    });
    expect(String(json.requests[0]!['last_seen'])).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);

    const beta = JSON.parse(
      (await expectExit(0, ['agent-permissions', 'requests', '--all', '--identity', 'agent-beta', '--json']))
        .stdout,
    ) as { requests: Record<string, unknown>[] };
    expect(beta.requests.map((r) => [r['request_id'], r['status']]).sort()).toEqual(
      [
        [betaDismissedEarlier, 'dismissed'],
        [betaMessaging, 'pending'],
      ].sort(),
    );
    const all = await expectExit(0, ['agent-permissions', 'requests', '--all']);
    expect(all.stdout.split('\n')[0]).toMatch(/STATUS\s+PERMISSION_ID$/);
    expect(all.stdout).toMatch(new RegExp(`${betaDismissedEarlier}.*dismissed\\s+-`));
    await expectExit(2, ['agent-permissions', 'requests', '--all', '--pending']);
  });

  it('approve signs, with the TPM key, a permission the gateway policy allows, and marks the request approved', async () => {
    await expectExit(1, ['agent-permissions', 'check', 'agent-alpha', agentPem, 'docstore']);
    // Anyone can claim agent-alpha with a key of their own: a key with no active permission under the
    // identity is signed only when the principal says so.
    const before = await everything();
    const unsure = await expectExit(1, [
      'agent-permissions',
      'approve',
      alphaDocstore,
      'org-alice',
      '--for',
      '90m',
    ]);
    expect(unsure.stderr).toMatch(
      /agent key sha256 [0-9a-f]{64} has no active permission as agent-alpha; .* approve with --new-key\. Nothing was signed/,
    );
    expect(await everything()).toBe(before);
    const r = await expectExit(0, [
      'agent-permissions',
      'approve',
      alphaDocstore,
      'org-alice',
      '--for',
      '90m',
      '--new-key',
    ]);
    const permissionId = /permission (perm-[0-9a-f-]{36}) signed by org-alice/.exec(r.stdout)?.[1];
    expect(r.stdout, r.stdout).toMatch(
      new RegExp(`^approved ${alphaDocstore}: agent-alpha -> docstore:443, `),
    );
    expect(permissionId).toBeDefined();

    const row = await requestRow(alphaDocstore);
    expect(row).toMatchObject({ status: 'approved', permission_id: permissionId, decided_by: 'org-alice' });
    expect(row?.decided_at).toMatch(/^\d{4}-/);

    // The row the gateway reads: the request's identity, key and destination, for exactly 90 minutes.
    const p = await db.query(
      `SELECT subject_identity, subject_public_key_spki_der, destination, signing_key_id,
         ${ts('not_before')} AS nb, ${ts('not_after')} AS na FROM permission_registry WHERE permission_id = $1`,
      [permissionId],
    );
    expect(p.rows[0]).toMatchObject({
      subject_identity: 'agent-alpha',
      destination: 'docstore:443',
      signing_key_id: 'org-alice',
    });
    expect((p.rows[0].subject_public_key_spki_der as Buffer).equals(agentSpki)).toBe(true);
    expect(parseTimestamp(p.rows[0].na) - parseTimestamp(p.rows[0].nb)).toBe(90n * 60n * 1_000_000n);

    // The gateway's own candidate query and policy allow it.
    const check = await expectExit(0, [
      'agent-permissions',
      'check',
      'agent-alpha',
      agentPem,
      'docstore',
      '--json',
    ]);
    expect(JSON.parse(check.stdout)).toMatchObject({ decision: 'allow', permission_id: permissionId });
  });

  it('refuses to approve a request that is not pending, an unknown id (exit 1) and a malformed id (exit 2)', async () => {
    const before = await everything();
    const again = await expectExit(1, ['agent-permissions', 'approve', alphaDocstore, 'org-alice']);
    expect(again.stderr).toMatch(
      new RegExp(`access request ${alphaDocstore} is approved at .* by org-alice as perm-`),
    );
    const dismissed = await expectExit(1, [
      'agent-permissions',
      'approve',
      betaDismissedEarlier,
      'org-alice',
    ]);
    expect(dismissed.stderr).toMatch(/is dismissed at .*, not pending/);
    const unknown = `req-${randomBytes(10).toString('hex')}`;
    expect((await expectExit(1, ['agent-permissions', 'approve', unknown, 'org-alice'])).stderr).toMatch(
      new RegExp(`no access request ${unknown}`),
    );
    for (const bad of ['req-123', `REQ-${'a'.repeat(20)}`, `req-${'A'.repeat(20)}`, 'perm-1']) {
      expect((await expectExit(2, ['agent-permissions', 'approve', bad, 'org-alice'])).stderr).toMatch(
        /REQUEST_ID must be req- and 20 lowercase hex digits/,
      );
    }
    await expectExit(2, ['agent-permissions', 'approve', betaMessaging, 'org-alice', '--for', '10s']);
    await expectExit(2, [
      'agent-permissions',
      'approve',
      betaMessaging,
      'org-alice',
      '--for',
      '1h',
      '--days',
      '2',
    ]);
    await expectExit(2, ['agent-permissions', 'approve', betaMessaging]);
    expect(await everything()).toBe(before);
  });

  it('refuses to approve a destination outside the principal scope, writing nothing', async () => {
    const before = await everything();
    const r = await expectExit(1, ['agent-permissions', 'approve', alphaOutside, 'org-alice', '--new-key']);
    expect(r.stderr).toMatch(/api\.example\.com:443 is outside the scope of principal key org-alice/);
    expect(await everything()).toBe(before);
    expect((await requestRow(alphaOutside))?.status).toBe('pending');
  });

  it('approve --all-pending --identity lists, asks, and signs every pending request of the identity', async () => {
    const betaDocstore = await recordRequest('agent-beta', betaSpki, 'docstore:443', { count: 2 });
    // Outside org-alice's scope: refused on its own, without sinking the others.
    const betaOutside = await recordRequest('agent-beta', betaSpki, 'api.example.com:443');
    const before = await everything();
    const approveAll = ['approve', '--all-pending', '--identity', 'agent-beta', 'org-alice', '--days', '2'];

    // agent-beta's key has no active permission: left out unless --new-key, even with --yes.
    const leftOut = await expectExit(1, ['agent-permissions', ...approveAll, '--yes']);
    expect(leftOut.stderr).toMatch(
      /left out: agent key sha256 [0-9a-f]{64} has no active permission as agent-beta/,
    );
    expect(leftOut.stderr).toMatch(
      /nothing signed: every pending request of agent-beta is from a key left out/,
    );
    expect(await everything()).toBe(before);
    approveAll.push('--new-key');

    // No answer (stdin closed): nothing is signed.
    const declined = await expectExit(1, ['agent-permissions', ...approveAll]);
    expect(declined.stdout).toContain(betaDocstore);
    expect(declined.stdout).toContain(betaMessaging);
    expect(declined.stdout).not.toContain(betaDismissedEarlier);
    expect(declined.stderr).toMatch(/nothing signed/);
    // agent-beta's key has no active permission: said before anyone answers.
    expect(declined.stderr).toMatch(
      /warning: agent key sha256 [0-9a-f]{64} has no active permission as agent-beta: signing it too \(--new-key\)/,
    );
    expect(await everything()).toBe(before);

    const yes = await runCommand(path.join(repoRoot, 'registry-cli', 'agent-permissions.sh'), approveAll, {
      env,
      input: 'y\n',
      timeoutMs: 60_000,
    });
    expect(yes.code, yes.stderr).toBe(0);
    expect(yes.stderr).toMatch(/sign 3 permissions for agent-beta with org-alice\? \[y\/N\]/);
    expect(yes.stdout).toMatch(/approved 2 access requests for agent-beta/);
    expect(yes.stderr).toMatch(
      new RegExp(`not approved ${betaOutside}: .*outside the scope of principal key org-alice`),
    );
    expect((await requestRow(betaOutside))?.status).toBe('pending');
    for (const [id, dest] of [
      [betaDocstore, 'docstore'],
      [betaMessaging, 'messaging:8443'],
    ] as const) {
      const row = await requestRow(id);
      expect(row).toMatchObject({ status: 'approved', decided_by: 'org-alice' });
      const check = await expectExit(0, [
        'agent-permissions',
        'check',
        'agent-beta',
        betaSpki.toString('hex'),
        dest,
        '--json',
      ]);
      expect(JSON.parse(check.stdout)).toMatchObject({
        decision: 'allow',
        permission_id: row?.permission_id,
      });
    }
    expect((await requestRow(betaDismissedEarlier))?.status).toBe('dismissed');
    // Only the refused one is left: exit 1, nothing signed.
    const rest = await expectExit(1, ['agent-permissions', ...approveAll, '--yes']);
    expect(rest.stderr).toMatch(new RegExp(`not approved ${betaOutside}: `));
    expect(rest.stdout).toMatch(/approved 0 access requests for agent-beta/);
  });

  it('dismiss marks a pending request dismissed, and only a pending one (as the admin role)', async () => {
    // The privileges migrations/0007 gives agent_gateway_admin are enough.
    const role = `agw_admin_${randomBytes(4).toString('hex')}`;
    await db.query(`CREATE ROLE ${role} LOGIN IN ROLE agent_gateway_admin`);
    const asAdmin = new URL(databaseUrl);
    asAdmin.username = role;
    asAdmin.password = '';
    let r: Awaited<ReturnType<typeof expectExit>>;
    try {
      r = await expectExit(0, ['agent-permissions', 'dismiss', alphaOutside], {
        AGENT_GATEWAY_DATABASE_URL: asAdmin.toString(),
      });
    } finally {
      await db.query(`DROP ROLE ${role}`);
    }
    expect(r.stdout).toMatch(
      new RegExp(`^dismissed ${alphaOutside}: agent-alpha -> api\\.example\\.com:443 at `),
    );
    const row = await requestRow(alphaOutside);
    expect(row).toMatchObject({ status: 'dismissed', permission_id: null, decided_by: null });
    expect(row?.decided_at).toMatch(/^\d{4}-/);
    const before = await everything();
    expect((await expectExit(1, ['agent-permissions', 'dismiss', alphaOutside])).stderr).toMatch(
      /is dismissed .*not pending/,
    );
    expect((await expectExit(1, ['agent-permissions', 'dismiss', alphaDocstore])).stderr).toMatch(
      /is approved .*not pending/,
    );
    await expectExit(2, ['agent-permissions', 'dismiss', 'req-nothex']);
    expect(await everything()).toBe(before);
  });

  it('a registry below schema 7 gets a clear error naming the version and migrate.sh (exit 2)', async () => {
    const adminUrl = inject('pgAdminUrl');
    const v6 = await createDatabaseAtVersion(adminUrl, 'registry_cli_requests_v6', 6);
    try {
      const id = accessRequestId('agent-alpha', agentSpki, 'docstore:443');
      for (const args of [['requests'], ['approve', id, 'org-alice'], ['dismiss', id]]) {
        const r = await expectExit(2, ['agent-permissions', ...args], { AGENT_GATEWAY_DATABASE_URL: v6 });
        expect(r.stderr).toMatch(
          /schema version 6; access requests need version 7: run registry-cli\/migrate\.sh/,
        );
      }
      // The other commands keep working on it.
      await expectExit(0, ['agent-permissions', 'list'], { AGENT_GATEWAY_DATABASE_URL: v6 });
    } finally {
      await dropDatabase(adminUrl, v6);
    }
    expect(databaseUrl).not.toBe(v6);
  });
});
