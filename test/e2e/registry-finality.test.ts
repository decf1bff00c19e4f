// A revocation is final (migrations/0005, docs/contract.md "A revocation is final"): against a real
// migrated PostgreSQL, the registry itself refuses to un-revoke, to postpone a revocation, to rewrite what
// a principal signed, and to delete history, for the admin role, the table owner and a superuser under
// session_replication_role = replica. The legitimate writes the registry CLI makes still work.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { REGISTRY_CHANGE_CHANNEL } from '../../core/registry-queries.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { withRegistry } from '../../registry-cli/db.js';
import { databaseFromEnv } from '../../registry-cli/env.js';
import { EXIT_REFUSED, Refusal } from '../../registry-cli/errors.js';
import {
  DAY,
  insertPermission,
  insertScope,
  insertSigner,
  newP256,
  nowTruncated,
  type PermissionSpec,
  signPermission,
} from '../unit/fixtures/signed-rows.js';

const superUrl = inject('pgAdminUrl');
const TABLES = ['permission_registry', 'principal_signing_keys', 'principal_key_permissions'] as const;

let url: string;
let adminRole: string;
/** A login role IN ROLE agent_gateway_admin (migrations/0002_roles.sql), as registry admins use. */
let admin: pg.Client;
/** The superuser that ran the migrations, so also the tables' owner. */
let owner: pg.Client;
const clients: pg.Client[] = [];
const other = newP256();

async function connect(connectionString: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString });
  await c.connect();
  clients.push(c);
  return c;
}

type Seeded = { keyId: string; scopeId: string; permissionId: string; spec: PermissionSpec };

/** A signer, its scope and one signed permission, all active, under names unique to `tag`. */
async function seed(tag: string): Promise<Seeded> {
  const signer = newP256();
  const now = nowTruncated();
  const keyId = `org-${tag}`;
  await insertSigner(owner, keyId, signer.spkiDer, now - DAY, now + 30n * DAY);
  const scopeId = await insertScope(owner, keyId, 'api.example.com:443', now - DAY, now + 30n * DAY);
  const spec: PermissionSpec = {
    permissionId: `perm-${tag}`,
    signingKeyId: keyId,
    subjectIdentity: `agent-${tag}`,
    subjectSpkiDer: newP256().spkiDer,
    destination: 'api.example.com:443',
    notBefore: now - DAY,
    notAfter: now + 7n * DAY,
  };
  await insertPermission(owner, spec, signer.privateKey);
  return { keyId, scopeId, permissionId: spec.permissionId, spec };
}

/** The statement fails with the migration's SQLSTATE and a message matching `pattern`. */
async function expectRefused(c: pg.Client, sql: string, params: unknown[], pattern: RegExp): Promise<void> {
  const err = await c.query(sql, params).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `${sql} was accepted`).toBeInstanceOf(pg.DatabaseError);
  const dbErr = err as pg.DatabaseError;
  expect(dbErr.code, dbErr.message).toBe('23001');
  expect(dbErr.message).toMatch(/^agent_gateway registry refused: /);
  expect(dbErr.message).toMatch(pattern);
}

async function revokedAt(table: string, idColumn: string, id: string): Promise<string | null> {
  const r = await owner.query<{ r: string | null }>(
    `SELECT revoked_at::text AS r FROM ${table} WHERE ${idColumn}::text = $1`,
    [id],
  );
  expect(r.rows).toHaveLength(1);
  return r.rows[0]!.r;
}

beforeAll(async () => {
  url = await createMigratedDatabase(superUrl, 'reg_finality');
  owner = await connect(url);
  adminRole = `agw_fin_${randomBytes(4).toString('hex')}`;
  await owner.query(`CREATE ROLE ${adminRole} LOGIN IN ROLE agent_gateway_admin`);
  const u = new URL(url);
  u.username = adminRole;
  admin = await connect(u.toString());
  expect((await admin.query<{ r: string }>('SELECT current_user AS r')).rows[0]!.r).toBe(adminRole);
  const now = nowTruncated();
  await insertSigner(owner, 'org-other', other.spkiDer, now - DAY, now + 30n * DAY);
});

afterAll(async () => {
  for (const c of clients) await c.end().catch(() => {});
  await dropDatabase(superUrl, url);
  const c = new pg.Client({ connectionString: superUrl });
  await c.connect();
  await c.query(`DROP ROLE IF EXISTS ${adminRole}`).finally(() => c.end());
});

describe('a revocation is final, as the admin role', () => {
  it('refuses to un-revoke a permission, and the row stays revoked', async () => {
    const s = await seed('unrevoke');
    await admin.query('UPDATE permission_registry SET revoked_at = now() WHERE permission_id = $1', [
      s.permissionId,
    ]);
    const before = await revokedAt('permission_registry', 'permission_id', s.permissionId);
    expect(before).not.toBeNull();
    await expectRefused(
      admin,
      'UPDATE permission_registry SET revoked_at = NULL, updated_at = now() WHERE permission_id = $1',
      [s.permissionId],
      /clearing revoked_at of permission_registry perm-unrevoke .*a revocation is final/,
    );
    expect(await revokedAt('permission_registry', 'permission_id', s.permissionId)).toBe(before);
  });

  it('refuses to move revoked_at later, allows moving it earlier', async () => {
    const s = await seed('later');
    await admin.query('UPDATE permission_registry SET revoked_at = now() WHERE permission_id = $1', [
      s.permissionId,
    ]);
    await expectRefused(
      admin,
      `UPDATE permission_registry SET revoked_at = revoked_at + interval '1 year' WHERE permission_id = $1`,
      [s.permissionId],
      /moving revoked_at of permission_registry perm-later later, from .* to /,
    );
    const earlier = await admin.query(
      `UPDATE permission_registry SET revoked_at = revoked_at - interval '1 hour', updated_at = now()
       WHERE permission_id = $1`,
      [s.permissionId],
    );
    expect(earlier.rowCount).toBe(1);
  });

  // Each column of core/permission-bytes.ts, the signature over them, and created_at.
  const SIGNED: readonly (readonly [string, (s: Seeded) => unknown])[] = [
    ['permission_id', (s) => `${s.permissionId}-x`],
    ['signing_key_id', () => 'org-other'],
    ['subject_identity', (s) => `${s.spec.subjectIdentity}-x`],
    ['subject_public_key_spki_der', () => newP256().spkiDer],
    ['destination', () => 'other.example.com:443'],
    ['not_before', () => '2020-01-01T00:00:00Z'],
    ['not_after', () => '2999-01-01T00:00:00Z'],
    ['signature', (s) => signPermission({ ...s.spec, notAfter: s.spec.notAfter + DAY }, other.privateKey)],
    ['created_at', () => '2020-01-01T00:00:00Z'],
  ];
  it.each(SIGNED)('refuses to change the signed column %s of an active permission', async (column, value) => {
    const s = await seed(`col-${column.replace(/_/g, '-')}`);
    await expectRefused(
      admin,
      `UPDATE permission_registry SET ${column} = $2 WHERE permission_id = $1`,
      [s.permissionId, value(s)],
      new RegExp(`changing ${column} of permission_registry ${s.permissionId} \\(fixed once written`),
    );
  });

  it('refuses to un-revoke a signing key, or to change its id or (once revoked) its key', async () => {
    const s = await seed('key');
    await expectRefused(
      admin,
      `UPDATE principal_signing_keys SET key_id = 'org-renamed' WHERE key_id = $1`,
      [s.keyId],
      /changing key_id of principal_signing_keys org-key /,
    );
    await admin.query('UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = $1', [s.keyId]);
    await expectRefused(
      admin,
      'UPDATE principal_signing_keys SET revoked_at = NULL WHERE key_id = $1',
      [s.keyId],
      /clearing revoked_at of principal_signing_keys org-key /,
    );
    await expectRefused(
      admin,
      'UPDATE principal_signing_keys SET public_key_spki_der = $2 WHERE key_id = $1',
      [s.keyId, newP256().spkiDer],
      /changing public_key_spki_der of principal_signing_keys org-key, which is revoked/,
    );
    expect(await revokedAt('principal_signing_keys', 'key_id', s.keyId)).not.toBeNull();
  });

  it('refuses to un-revoke a scope, or to change what it delegates to whom', async () => {
    const s = await seed('scope');
    await expectRefused(
      admin,
      `UPDATE principal_key_permissions SET destination = 'other.example.com:443' WHERE id = $1`,
      [s.scopeId],
      new RegExp(`changing destination of principal_key_permissions ${s.scopeId} `),
    );
    await expectRefused(
      admin,
      `UPDATE principal_key_permissions SET signing_key_id = 'org-other' WHERE id = $1`,
      [s.scopeId],
      new RegExp(`changing signing_key_id of principal_key_permissions ${s.scopeId} `),
    );
    await admin.query('UPDATE principal_key_permissions SET revoked_at = now() WHERE id = $1', [s.scopeId]);
    await expectRefused(
      admin,
      'UPDATE principal_key_permissions SET revoked_at = NULL WHERE id = $1',
      [s.scopeId],
      new RegExp(`clearing revoked_at of principal_key_permissions ${s.scopeId} `),
    );
    await expectRefused(
      admin,
      `UPDATE principal_key_permissions SET not_after = not_after + interval '1 year' WHERE id = $1`,
      [s.scopeId],
      new RegExp(`changing not_after of principal_key_permissions ${s.scopeId}, which is revoked`),
    );
    expect(await revokedAt('principal_key_permissions', 'id', s.scopeId)).not.toBeNull();
  });

  it('still allows what the registry CLI does: revoke, widen or narrow an active scope, replace a key', async () => {
    const s = await seed('legit');
    const scope = await admin.query(
      `UPDATE principal_key_permissions SET not_before = least(not_before, now()),
         not_after = not_after + interval '10 days', updated_at = now() WHERE id = $1`,
      [s.scopeId],
    );
    expect(scope.rowCount).toBe(1);
    const narrowed = await admin.query(
      `UPDATE principal_key_permissions SET not_after = not_after - interval '20 days' WHERE id = $1`,
      [s.scopeId],
    );
    expect(narrowed.rowCount).toBe(1);
    const replaced = await admin.query(
      `UPDATE principal_signing_keys SET public_key_spki_der = $2, not_before = now(), updated_at = now()
       WHERE key_id = $1`,
      [s.keyId, newP256().spkiDer],
    );
    expect(replaced.rowCount).toBe(1);
    const revoke = await admin.query(
      'UPDATE permission_registry SET revoked_at = now(), updated_at = now() WHERE permission_id = $1 AND revoked_at IS NULL',
      [s.permissionId],
    );
    expect(revoke.rowCount).toBe(1);
    // Touching updated_at of a revoked row changes nothing that matters.
    await admin.query('UPDATE permission_registry SET updated_at = now() WHERE permission_id = $1', [
      s.permissionId,
    ]);
    expect(await revokedAt('permission_registry', 'permission_id', s.permissionId)).not.toBeNull();
  });
});

describe('the registry CLI reports the registry refusing', () => {
  it('as a refusal (exit 1) that quotes the registry, with the transaction rolled back', async () => {
    const s = await seed('cli');
    const u = new URL(url);
    u.username = adminRole;
    const target = databaseFromEnv({ AGENT_GATEWAY_DATABASE_URL: u.toString() });
    const err = await withRegistry(target, (registry) =>
      registry.transaction(async (db) => {
        await db.query('UPDATE permission_registry SET revoked_at = now() WHERE permission_id = $1', [
          s.permissionId,
        ]);
        await db.query(`UPDATE permission_registry SET revoked_at = NULL WHERE permission_id = $1`, [
          s.permissionId,
        ]);
      }),
    ).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Refusal);
    expect((err as Refusal).exitCode).toBe(EXIT_REFUSED);
    expect((err as Refusal).message).toMatch(
      /^agent_gateway registry refused: clearing revoked_at of permission_registry perm-cli .*; nothing was written$/,
    );
    expect(await revokedAt('permission_registry', 'permission_id', s.permissionId)).toBeNull();
  });
});

describe('a revocation is final for the owner and under session_replication_role = replica', () => {
  it('refuses DELETE and TRUNCATE on every registry table, even to the owner', async () => {
    const s = await seed('delete');
    const rows: Record<(typeof TABLES)[number], [string, string]> = {
      permission_registry: ['permission_id', s.permissionId],
      principal_signing_keys: ['key_id', s.keyId],
      principal_key_permissions: ['id', s.scopeId],
    };
    for (const table of TABLES) {
      const [column, id] = rows[table];
      await expectRefused(
        owner,
        `DELETE FROM ${table} WHERE ${column}::text = $1`,
        [id],
        new RegExp(`DELETE of ${table} ${id} \\(registry rows are never deleted`),
      );
      await expectRefused(owner, `TRUNCATE ${table} CASCADE`, [], /TRUNCATE of /);
    }
    const left = await owner.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM permission_registry WHERE permission_id = $1',
      [s.permissionId],
    );
    expect(left.rows[0]!.n).toBe(1);
  });

  it('a superuser under session_replication_role = replica cannot un-revoke, rewrite or delete either', async () => {
    const s = await seed('replica');
    await owner.query('UPDATE permission_registry SET revoked_at = now() WHERE permission_id = $1', [
      s.permissionId,
    ]);
    await owner.query('UPDATE principal_key_permissions SET revoked_at = now() WHERE id = $1', [s.scopeId]);
    await owner.query('UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = $1', [s.keyId]);
    const superuser = await connect(url);
    await superuser.query('SET session_replication_role = replica');
    expect((await superuser.query('SHOW session_replication_role')).rows[0]).toEqual({
      session_replication_role: 'replica',
    });
    await expectRefused(
      superuser,
      'UPDATE permission_registry SET revoked_at = NULL WHERE permission_id = $1',
      [s.permissionId],
      /clearing revoked_at of permission_registry perm-replica /,
    );
    await expectRefused(
      superuser,
      'UPDATE principal_signing_keys SET revoked_at = NULL WHERE key_id = $1',
      [s.keyId],
      /clearing revoked_at of principal_signing_keys org-replica /,
    );
    await expectRefused(
      superuser,
      'UPDATE principal_key_permissions SET revoked_at = NULL WHERE id = $1',
      [s.scopeId],
      /clearing revoked_at of principal_key_permissions /,
    );
    await expectRefused(
      superuser,
      `UPDATE permission_registry SET not_after = not_after + interval '1 year' WHERE permission_id = $1`,
      [s.permissionId],
      /changing not_after of permission_registry perm-replica /,
    );
    await expectRefused(
      superuser,
      'DELETE FROM permission_registry WHERE permission_id = $1',
      [s.permissionId],
      /DELETE of permission_registry perm-replica /,
    );
    await superuser.query('RESET session_replication_role');
    expect(await revokedAt('permission_registry', 'permission_id', s.permissionId)).not.toBeNull();
    expect(await revokedAt('principal_signing_keys', 'key_id', s.keyId)).not.toBeNull();
    expect(await revokedAt('principal_key_permissions', 'id', s.scopeId)).not.toBeNull();
  });
});

describe('the NOTIFY triggers fire on a replica too', () => {
  it('every registry trigger is ENABLE ALWAYS', async () => {
    const r = await owner.query<{ table: string; name: string; enabled: string }>(
      `SELECT c.relname AS table, t.tgname AS name, t.tgenabled AS enabled
       FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
       WHERE NOT t.tgisinternal AND c.relname = ANY($1) ORDER BY 1, 2`,
      [TABLES],
    );
    // Disabled ('D') or origin-only ('O', the default) triggers are skipped by a replica's writes.
    expect(r.rows.filter((row) => row.enabled !== 'A')).toEqual([]);
    const names = r.rows.map((row) => row.name);
    for (const table of TABLES) {
      for (const suffix of ['_notify', '_notify_truncate', '_guard', '_guard_truncate']) {
        expect(names).toContain(`${table}${suffix}`);
      }
    }
  });

  it('a revocation written under session_replication_role = replica still notifies', async () => {
    const s = await seed('notify');
    const listener = await connect(url);
    const got: string[] = [];
    listener.on('notification', (m) => {
      if (m.channel === REGISTRY_CHANGE_CHANNEL) got.push(m.payload ?? '');
    });
    await listener.query(`LISTEN ${REGISTRY_CHANGE_CHANNEL}`);
    const replica = await connect(url);
    await replica.query('SET session_replication_role = replica');
    await replica.query(
      'UPDATE permission_registry SET revoked_at = now(), updated_at = now() WHERE permission_id = $1',
      [s.permissionId],
    );
    const deadline = Date.now() + 3000;
    while (got.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(got.map((p) => JSON.parse(p) as unknown)).toEqual([
      { table: 'permission_registry', op: 'UPDATE', permission_id: s.permissionId, signing_key_id: s.keyId },
    ]);
  });
});
