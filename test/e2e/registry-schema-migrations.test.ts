// The registry as PostgreSQL holds it: migrations, roles and the NOTIFY payloads of its triggers. Real
// PostgreSQL (shared cluster, own databases). The gateway's reads of it are in registry-schema-reads.test.ts.
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { latestKnownVersion, listMigrations, migrate } from '../../core/migrate.js';
import { registryDatabases, registryFor } from '../support/registry-databases.js';
import {
  DAY,
  insertPermission,
  insertScope,
  insertSigner,
  newP256,
  nowTruncated,
} from '../unit/fixtures/signed-rows.js';

const { connect, freshDb, dbAtVersion } = registryDatabases();

describe('migrations', () => {
  it('apply once, record every version, and are not applied again', async () => {
    const url = await freshDb('reg_migrate', false);
    const applied = await migrate(url);
    expect(applied).toEqual(listMigrations().map((m) => m.name));
    expect(await migrate(url)).toEqual([]);
    const c = await connect(url);
    const versions = await c.query<{ version: number }>(
      'SELECT version FROM agent_gateway_schema_version ORDER BY 1',
    );
    expect(versions.rows.map((r) => r.version)).toEqual(listMigrations().map((m) => m.version));
    // Re-running a file by hand fails instead of duplicating anything.
    const first = readFileSync(listMigrations()[0]!.path, 'utf8');
    await expect(c.query(first)).rejects.toThrow(/already exists/);
  });

  it('refuse a database newer than this build', async () => {
    const url = await freshDb('reg_newer');
    const c = await connect(url);
    await c.query('INSERT INTO agent_gateway_schema_version (version) VALUES (99)');
    await expect(migrate(url)).rejects.toThrow(/newer than the newest migration/);
  });
});

describe('roles', () => {
  let url: string;
  let c: pg.Client;
  beforeAll(async () => {
    url = await freshDb('reg_roles');
    c = await connect(url);
  });

  const TABLES = [
    'agent_gateway_schema_version',
    'principal_signing_keys',
    'principal_key_permissions',
    'permission_registry',
  ];
  // [role, privilege, table filter, expected]
  const MATRIX: readonly (readonly [string, string, (t: string) => boolean, boolean])[] = [
    ['agent_gateway_runtime', 'SELECT', () => true, true],
    ['agent_gateway_runtime', 'INSERT', () => true, false],
    ['agent_gateway_runtime', 'UPDATE', () => true, false],
    ['agent_gateway_runtime', 'DELETE', () => true, false],
    ['agent_gateway_runtime', 'TRUNCATE', () => true, false],
    ['agent_gateway_admin', 'SELECT', () => true, true],
    ['agent_gateway_admin', 'INSERT', (t) => t !== 'agent_gateway_schema_version', true],
    ['agent_gateway_admin', 'UPDATE', (t) => t !== 'agent_gateway_schema_version', true],
    ['agent_gateway_admin', 'INSERT', (t) => t === 'agent_gateway_schema_version', false],
    ['agent_gateway_admin', 'DELETE', () => true, false],
    ['agent_gateway_admin', 'TRUNCATE', () => true, false],
  ];
  it.each(MATRIX)('%s %s → %s', async (role, privilege, filter, expected) => {
    for (const table of TABLES.filter(filter)) {
      const r = await c.query<{ ok: boolean }>('SELECT has_table_privilege($1, $2, $3) AS ok', [
        role,
        table,
        privilege,
      ]);
      expect(r.rows[0]?.ok, `${role} ${privilege} ${table}`).toBe(expected);
    }
  });

  it('the runtime role really cannot INSERT, the admin role really cannot DELETE', async () => {
    const signer = newP256();
    const now = nowTruncated();
    await c.query('BEGIN');
    try {
      await c.query('SET LOCAL ROLE agent_gateway_runtime');
      await c.query('SELECT count(*) FROM permission_registry');
      await expect(insertSigner(c, 'org-x', signer.spkiDer, now - DAY, now + DAY)).rejects.toThrow(
        /permission denied/,
      );
    } finally {
      await c.query('ROLLBACK');
    }
    await c.query('BEGIN');
    try {
      await c.query('SET LOCAL ROLE agent_gateway_admin');
      await insertSigner(c, 'org-y', signer.spkiDer, now - DAY, now + DAY);
      await c.query("UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = 'org-y'");
      await expect(c.query("DELETE FROM principal_signing_keys WHERE key_id = 'org-y'")).rejects.toThrow(
        /permission denied/,
      );
    } finally {
      await c.query('ROLLBACK');
    }
  });

  it('a login role in agent_gateway_runtime can run the gateway queries and LISTEN', async () => {
    const role = `agw_rt_${Math.random().toString(36).slice(2, 10)}`;
    await c.query(`CREATE ROLE ${role} LOGIN IN ROLE agent_gateway_runtime`);
    try {
      const u = new URL(url);
      u.username = role;
      const registry = registryFor(u.toString());
      try {
        expect(await registry.checkSchema()).toEqual({ version: latestKnownVersion(), notifications: true });
        expect(await registry.ping()).toEqual({ ok: true, version: latestKnownVersion() });
        const rows = await registry.activeCandidates(
          { identity: 'a', spkiDer: Buffer.from('x'), destination: 'a:443' },
          nowTruncated(),
        );
        expect(rows).toEqual([]);
      } finally {
        await registry.close();
      }
      const listener = await connect(u.toString());
      await listener.query('LISTEN agent_gateway_registry_changed');
      await listener.end();
    } finally {
      await c.query(`DROP ROLE ${role}`);
    }
  });
});

describe('change notifications', () => {
  // From version 5 on the registry refuses DELETE and TRUNCATE (registry-finality.test.ts), so their
  // notifications are checked on a version-4 registry, which gateways still accept.
  it('arrive for insert, update, delete on every table, and truncate (version 4)', async () => {
    const url = await dbAtVersion('reg_notify', 4);
    const listener = await connect(url);
    const writer = await connect(url);
    const got: unknown[] = [];
    listener.on('notification', (m) => got.push(JSON.parse(m.payload ?? 'null')));
    await listener.query('LISTEN agent_gateway_registry_changed');

    const signer = newP256();
    const now = nowTruncated();
    await insertSigner(writer, 'org-n', signer.spkiDer, now - DAY, now + DAY);
    await insertScope(writer, 'org-n', 'a.example:443', now - DAY, now + DAY);
    await insertPermission(
      writer,
      {
        permissionId: 'perm-n',
        signingKeyId: 'org-n',
        subjectIdentity: 'agent',
        subjectSpkiDer: newP256().spkiDer,
        destination: 'a.example:443',
        notBefore: now - DAY,
        notAfter: now + DAY,
      },
      signer.privateKey,
    );
    await writer.query("UPDATE permission_registry SET revoked_at = now() WHERE permission_id = 'perm-n'");
    await writer.query(
      "UPDATE principal_key_permissions SET revoked_at = now() WHERE signing_key_id = 'org-n'",
    );
    await writer.query("UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = 'org-n'");
    await writer.query("DELETE FROM permission_registry WHERE permission_id = 'perm-n'");
    await writer.query("DELETE FROM principal_key_permissions WHERE signing_key_id = 'org-n'");
    await writer.query("DELETE FROM principal_signing_keys WHERE key_id = 'org-n'");
    await writer.query('TRUNCATE permission_registry');
    // Nothing is announced for a rolled-back write.
    await writer.query('BEGIN');
    await writer.query("UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = 'nobody'");
    await insertSigner(writer, 'org-rollback', newP256().spkiDer, now - DAY, now + DAY);
    await writer.query('ROLLBACK');

    const expected = [
      { table: 'principal_signing_keys', op: 'INSERT', signing_key_id: 'org-n' },
      {
        table: 'principal_key_permissions',
        op: 'INSERT',
        signing_key_id: 'org-n',
        destination: 'a.example:443',
      },
      { table: 'permission_registry', op: 'INSERT', permission_id: 'perm-n', signing_key_id: 'org-n' },
      { table: 'permission_registry', op: 'UPDATE', permission_id: 'perm-n', signing_key_id: 'org-n' },
      {
        table: 'principal_key_permissions',
        op: 'UPDATE',
        signing_key_id: 'org-n',
        destination: 'a.example:443',
      },
      { table: 'principal_signing_keys', op: 'UPDATE', signing_key_id: 'org-n' },
      { table: 'permission_registry', op: 'DELETE', permission_id: 'perm-n', signing_key_id: 'org-n' },
      {
        table: 'principal_key_permissions',
        op: 'DELETE',
        signing_key_id: 'org-n',
        destination: 'a.example:443',
      },
      { table: 'principal_signing_keys', op: 'DELETE', signing_key_id: 'org-n' },
      { table: '*', op: 'TRUNCATE' },
    ];
    const deadline = Date.now() + 5000;
    while (got.length < expected.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    expect(got).toEqual(expected);
  });
});
