// A replaced key stays replaced (migrations/0008, docs/contract.md "A revocation is final"): against a real
// migrated PostgreSQL, a principal key row that gives up a public key (register-principal-key --replace)
// can never take it back, whoever asks: the admin role, the tables' owner, a superuser under
// session_replication_role = replica. The record of retired keys is append-only.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { DAY, insertSigner, newP256, nowTruncated } from '../unit/fixtures/signed-rows.js';

const superUrl = inject('pgAdminUrl');
let url: string;
let adminRole: string;
let admin: pg.Client;
let owner: pg.Client;

async function refusal(c: pg.Client, sql: string, params: unknown[]): Promise<pg.DatabaseError> {
  const err = await c.query(sql, params).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `${sql} was accepted`).toBeInstanceOf(pg.DatabaseError);
  return err as pg.DatabaseError;
}

beforeAll(async () => {
  url = await createMigratedDatabase(superUrl, 'reg_replaced_keys');
  owner = new pg.Client({ connectionString: url });
  await owner.connect();
  adminRole = `agw_rep_${randomBytes(4).toString('hex')}`;
  await owner.query(`CREATE ROLE ${adminRole} LOGIN IN ROLE agent_gateway_admin`);
  const u = new URL(url);
  u.username = adminRole;
  admin = new pg.Client({ connectionString: u.toString() });
  await admin.connect();
});

afterAll(async () => {
  await admin?.end().catch(() => {});
  await owner?.end().catch(() => {});
  if (url) await dropDatabase(superUrl, url);
  const c = new pg.Client({ connectionString: superUrl });
  await c.connect();
  await c.query(`DROP ROLE IF EXISTS ${adminRole}`).finally(() => c.end());
});

describe('a replaced principal key stays replaced', () => {
  it('records the key a row gives up, and refuses to put it back for the admin role, the owner and a replica session', async () => {
    const first = newP256();
    const second = newP256();
    const now = nowTruncated();
    await insertSigner(owner, 'org-replaced', first.spkiDer, now - DAY, now + 30n * DAY);
    // The replacement the registry CLI makes (--replace), as the admin role: allowed, and recorded.
    await admin.query('UPDATE principal_signing_keys SET public_key_spki_der = $2 WHERE key_id = $1', [
      'org-replaced',
      second.spkiDer,
    ]);
    const retired = await owner.query<{ spki: Buffer }>(
      'SELECT public_key_spki_der AS spki FROM retired_principal_keys WHERE key_id = $1',
      ['org-replaced'],
    );
    expect(retired.rows.map((r) => r.spki.toString('hex'))).toEqual([first.spkiDer.toString('hex')]);

    const putBack = 'UPDATE principal_signing_keys SET public_key_spki_der = $2 WHERE key_id = $1';
    for (const c of [admin, owner]) {
      const err = await refusal(c, putBack, ['org-replaced', first.spkiDer]);
      expect(err.code, err.message).toBe('23001');
      expect(err.message).toMatch(
        /principal_signing_keys org-replaced taking back public key sha256 [0-9a-f]{64}/,
      );
    }
    await owner.query('BEGIN');
    await owner.query('SET LOCAL session_replication_role = replica');
    const replica = await refusal(owner, putBack, ['org-replaced', first.spkiDer]);
    await owner.query('ROLLBACK');
    expect(replica.code).toBe('23001');
    const now2 = await owner.query<{ spki: Buffer }>(
      'SELECT public_key_spki_der AS spki FROM principal_signing_keys WHERE key_id = $1',
      ['org-replaced'],
    );
    expect(now2.rows[0]?.spki.equals(second.spkiDer)).toBe(true);
  });

  it('the record is append-only: no UPDATE, DELETE or TRUNCATE, even by the owner; the admin role cannot even try', async () => {
    for (const sql of [
      "UPDATE retired_principal_keys SET key_id = 'x' WHERE key_id = 'org-replaced'",
      "DELETE FROM retired_principal_keys WHERE key_id = 'org-replaced'",
      'TRUNCATE retired_principal_keys',
    ]) {
      const err = await refusal(owner, sql, []);
      expect(err.code, err.message).toBe('23001');
      expect(err.message).toMatch(/retired_principal_keys/);
      const denied = await refusal(admin, sql, []);
      expect(['23001', '42501']).toContain(denied.code);
    }
    const left = await owner.query<{ n: number }>('SELECT count(*)::int AS n FROM retired_principal_keys');
    expect(left.rows[0]?.n).toBe(1);
  });
});
