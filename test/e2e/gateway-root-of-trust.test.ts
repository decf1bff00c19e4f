// Root of trust (docs/contract.md "Root of trust", issue #15): with policy.trust_roots set, the registry
// is untrusted storage. Against a real PostgreSQL and the real gateway process: a rooted chain is allowed;
// an unrooted key or scope is denied; and someone holding the registry's admin role (as the registry CLI
// uses it) but no root key cannot turn any insert or update into an allowed CONNECT.
import { sign } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { canonicalPrincipalKeyBytes, canonicalScopeBytes, rootKeyId } from '../../core/root-signed-bytes.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { createPrincipalKey } from '../../dev-support/pki.js';
import { seedPermission, seedScope, windowFromNow } from '../../dev-support/registry-seed.js';
import { rootSignPrincipal, rootSignScopes } from '../../dev-support/root-seed.js';
import { DEST, type RootedRegistry, startRootedRegistry } from '../support/root-of-trust.js';

const root = createPrincipalKey();
let r: RootedRegistry;

beforeAll(async () => {
  // No decision cache: each CONNECT below is decided on the rows as they are right after the attack,
  // not on an allow cached until its notification arrives.
  r = await startRootedRegistry(inject('pgAdminUrl'), 'gw_root_attacks', [root], {
    decision_cache_max_entries: 0,
  });
});
afterAll(async () => {
  await r?.cleanup();
});

/** Statement as the admin role; a refusal by migrations/0005's guards is fine (the attack failed). */
async function asAdmin(sql: string, params: unknown[]): Promise<'done' | 'refused'> {
  try {
    await r.admin.query(sql, params);
    return 'done';
  } catch (err) {
    expect((err as { code?: string }).code, String(err)).toBe('23001');
    return 'refused';
  }
}

describe('with trust_roots set', () => {
  it('logs the root ids in force at startup', async () => {
    const lines = await r.gw.waitForLogs('trust roots in force');
    expect(lines[0]!['trust_root_ids']).toEqual([rootKeyId(root.spkiDer)]);
  });

  it('allows a rooted chain', async () => {
    const p = await r.rootedPrincipal('alice', root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
  });

  it('denies a grant by an unrooted key: signer_not_rooted', async () => {
    const p = await r.principal('bob');
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
  });

  it('denies a grant under an unrooted scope of a rooted key: scope_not_rooted', async () => {
    const p = await r.principal('carol');
    await rootSignPrincipal(r.dbUrl, p.keyId, root);
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'scope_not_rooted' });
  });
});

describe('an attacker with the admin role and no root key', () => {
  it('(a) inserts their own key, scope and signed grant: signer_not_rooted', async () => {
    const p = await r.principal('mallory-a', r.adminRoleUrl);
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
  });

  it("(b) copies a rooted key row's root signature (and its scope's) onto their own rows", async () => {
    const victim = await r.rootedPrincipal('victim-b', root);
    const p = await r.principal('mallory-b', r.adminRoleUrl);
    expect(
      await asAdmin(
        `UPDATE principal_signing_keys m SET root_key_id = v.root_key_id, root_signature = v.root_signature
         FROM principal_signing_keys v WHERE v.key_id = $1 AND m.key_id = $2`,
        [victim.keyId, p.keyId],
      ),
    ).toBe('done');
    expect(
      await asAdmin(
        `UPDATE principal_key_permissions m SET root_key_id = v.root_key_id, root_signature = v.root_signature
         FROM principal_key_permissions v WHERE v.signing_key_id = $1 AND m.signing_key_id = $2`,
        [victim.keyId, p.keyId],
      ),
    ).toBe('done');
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
    expect(await r.connect(victim.agent)).toEqual({ status: 200, reason: undefined });
  });

  it("(b') with a principal's own key too, delegates a new scope under a copied scope signature", async () => {
    // The principal key is not a root key: a scope it was never given stays unrooted.
    const p = await r.rootedPrincipal('mallory-b2', root);
    await seedScope(r.adminRoleUrl, { principalId: p.keyId, destination: 'secrets:443' });
    expect(
      await asAdmin(
        `UPDATE principal_key_permissions m SET root_key_id = v.root_key_id, root_signature = v.root_signature
         FROM principal_key_permissions v
         WHERE v.signing_key_id = $1 AND v.destination = $2 AND m.signing_key_id = $1 AND m.destination = 'secrets:443'`,
        [p.keyId, DEST],
      ),
    ).toBe('done');
    const { grant } = await import('../../dev-support/registry-seed.js');
    const { createCarrier } = await import('../../dev-support/pki.js');
    const agent = await createCarrier('agent-mallory-b2-secrets');
    await grant(r.adminRoleUrl, {
      principalId: p.keyId,
      principal: p.key,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'secrets:443',
    });
    const { connectH2, openTunnel, closeSession } = await import('../support/gateway.js');
    const session = await connectH2(r.gw.port, { ca: r.gw.caPem, carrier: agent });
    const t = await openTunnel(session, 'secrets:443');
    await closeSession(session);
    expect([t.status, t.headers['agent-gateway-deny-reason']]).toEqual([403, 'scope_not_rooted']);
  });

  it("(c) widens a rooted key's window: signer_not_rooted", async () => {
    const p = await r.rootedPrincipal('victim-c1', root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
    const outcome = await asAdmin(
      `UPDATE principal_signing_keys SET not_after = not_after + interval '365 days' WHERE key_id = $1`,
      [p.keyId],
    );
    expect(outcome).toBe('done');
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
  });

  it("(c) widens a rooted scope's window: scope_not_rooted", async () => {
    const p = await r.rootedPrincipal('victim-c2', root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
    const outcome = await asAdmin(
      `UPDATE principal_key_permissions SET not_before = not_before - interval '1 day' WHERE signing_key_id = $1`,
      [p.keyId],
    );
    expect(outcome).toBe('done');
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'scope_not_rooted' });
  });

  it("(d) replays a revoked rooted scope's root signature into a new scope row: scope_revoked", async () => {
    const p = await r.rootedPrincipal('victim-d', root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
    await asAdmin(
      'UPDATE principal_key_permissions SET revoked_at = now(), updated_at = now() WHERE signing_key_id = $1',
      [p.keyId],
    );
    expect((await r.connect(p.agent)).status).toBe(403);
    const outcome = await asAdmin(
      `INSERT INTO principal_key_permissions (signing_key_id, destination, not_before, not_after, root_key_id, root_signature)
       SELECT signing_key_id, destination, not_before, not_after, root_key_id, root_signature
       FROM principal_key_permissions WHERE signing_key_id = $1`,
      [p.keyId],
    );
    expect(outcome).toBe('done');
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'scope_revoked' });
  });

  it("(d') replays it with not_before moved to the same instant BC (printed alike without an era): invalid_row", async () => {
    const p = await r.rootedPrincipal('victim-d2', root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
    await asAdmin(
      'UPDATE principal_key_permissions SET revoked_at = now(), updated_at = now() WHERE signing_key_id = $1',
      [p.keyId],
    );
    const outcome = await asAdmin(
      `INSERT INTO principal_key_permissions (signing_key_id, destination, not_before, not_after, root_key_id, root_signature)
       SELECT signing_key_id, destination,
              ((to_char(not_before AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' BC')::timestamp AT TIME ZONE 'UTC'),
              not_after, root_key_id, root_signature
       FROM principal_key_permissions WHERE signing_key_id = $1`,
      [p.keyId],
    );
    expect(outcome).toBe('done');
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'invalid_row' });
  });

  it("(f) puts a replaced key's old row back (old SPKI, old root signature) and grants with the old key: scope_not_rooted", async () => {
    const p = await r.rootedPrincipal('victim-f', root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
    const old = await r.admin.query<{ spki: Buffer; sig: Buffer }>(
      'SELECT public_key_spki_der AS spki, root_signature AS sig FROM principal_signing_keys WHERE key_id = $1',
      [p.keyId],
    );
    // The principal's key leaked, so it is replaced in place as register-principal-key --replace does:
    // new SPKI, old scopes revoked, a new scope, key and scope signed anew by the root.
    const next = createPrincipalKey();
    await r.admin.query('UPDATE principal_signing_keys SET public_key_spki_der = $2 WHERE key_id = $1', [
      p.keyId,
      next.spkiDer,
    ]);
    await r.admin.query(
      'UPDATE principal_key_permissions SET revoked_at = now(), updated_at = now() WHERE signing_key_id = $1',
      [p.keyId],
    );
    // A delegation granted again starts after the revocation, as the CLI's does (at now()); whole
    // seconds here, so wait past the second the revocation fell in.
    await new Promise((res) => setTimeout(res, 1100));
    await seedScope(r.dbUrl, { principalId: p.keyId, destination: DEST, window: windowFromNow(0, 50) });
    await rootSignPrincipal(r.dbUrl, p.keyId, root);
    await rootSignScopes(r.dbUrl, p.keyId, root);
    // The leaked key's grant no longer counts: the chain above it is the new key's.
    expect((await r.connect(p.agent)).status).toBe(403);
    // The attack: whoever holds the leaked key and the admin role puts the old key row back and signs
    // a grant with the leaked key inside the new scope's window. The registry refuses to take a retired
    // key back (migrations/0008); were it done anyway (a superuser dropping the trigger), the scope
    // signed for the new key still does not count for the old one.
    expect(
      await asAdmin(
        'UPDATE principal_signing_keys SET public_key_spki_der = $2, root_signature = $3 WHERE key_id = $1',
        [p.keyId, old.rows[0]?.spki, old.rows[0]?.sig],
      ),
    ).toBe('refused');
    const owner = new pg.Client({ connectionString: r.dbUrl });
    await owner.connect();
    try {
      await owner.query('BEGIN');
      await owner.query('ALTER TABLE principal_signing_keys DISABLE TRIGGER principal_signing_keys_retire');
      await owner.query(
        'UPDATE principal_signing_keys SET public_key_spki_der = $2, root_signature = $3 WHERE key_id = $1',
        [p.keyId, old.rows[0]?.spki, old.rows[0]?.sig],
      );
      await owner.query(
        'ALTER TABLE principal_signing_keys ENABLE ALWAYS TRIGGER principal_signing_keys_retire',
      );
      await owner.query('COMMIT');
    } finally {
      await owner.end();
    }
    await seedPermission(r.adminRoleUrl, {
      permissionId: 'perm-victim-f-leaked',
      principalId: p.keyId,
      principal: p.key,
      identity: p.agent.identity,
      subjectSpkiDer: p.agent.spkiDer,
      destination: DEST,
      window: windowFromNow(0, 20),
    });
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'scope_not_rooted' });
  });

  it("(g) puts back a revoked delegation's earlier window, signed by the root before a refresh: scope_revoked", async () => {
    const p = await r.rootedPrincipal('victim-g', root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
    const earlier = await r.admin.query<{ nb: string; na: string; rk: string; sig: Buffer }>(
      `SELECT not_before::text AS nb, not_after::text AS na, root_key_id AS rk, root_signature AS sig
       FROM principal_key_permissions WHERE signing_key_id = $1`,
      [p.keyId],
    );
    // A legitimate refresh: key and scope extended and signed again by the root.
    await r.admin.query(
      `UPDATE principal_signing_keys SET not_after = not_after + interval '30 days' WHERE key_id = $1`,
      [p.keyId],
    );
    await r.admin.query(
      `UPDATE principal_key_permissions SET not_after = not_after + interval '10 days' WHERE signing_key_id = $1`,
      [p.keyId],
    );
    await rootSignPrincipal(r.dbUrl, p.keyId, root);
    await rootSignScopes(r.dbUrl, p.keyId, root);
    expect(await r.connect(p.agent)).toEqual({ status: 200, reason: undefined });
    await r.admin.query(
      'UPDATE principal_key_permissions SET revoked_at = now(), updated_at = now() WHERE signing_key_id = $1',
      [p.keyId],
    );
    expect((await r.connect(p.agent)).status).toBe(403);
    // The attack: the window and signature from before the refresh, kept and put back as a new row.
    const e = earlier.rows[0]!;
    expect(
      await asAdmin(
        `INSERT INTO principal_key_permissions (signing_key_id, destination, not_before, not_after, root_key_id, root_signature)
         VALUES ($1, $2, $3::timestamptz, $4::timestamptz, $5, $6)`,
        [p.keyId, DEST, e.nb, e.na, e.rk, e.sig],
      ),
    ).toBe('done');
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'scope_revoked' });
  });

  it('(e) signs with a root of their own, recorded in registry_root_keys but not configured', async () => {
    const own = createPrincipalKey();
    const ownId = rootKeyId(own.spkiDer);
    expect(
      await asAdmin(
        `INSERT INTO registry_root_keys (root_key_id, algorithm, public_key_spki_der, description)
         VALUES ($1, 'ecdsa_p256_sha256', $2, 'attacker')`,
        [ownId, own.spkiDer],
      ),
    ).toBe('done');
    const p = await r.principal('mallory-e', r.adminRoleUrl);
    await rootSignPrincipal(r.adminRoleUrl, p.keyId, own);
    await rootSignScopes(r.adminRoleUrl, p.keyId, own);
    const row = await r.admin.query<{ id: string | null }>(
      'SELECT root_key_id AS id FROM principal_signing_keys WHERE key_id = $1',
      [p.keyId],
    );
    expect(row.rows[0]!.id).toBe(ownId);
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
    // Naming the configured root's id over their own signature is no better.
    await asAdmin('UPDATE principal_signing_keys SET root_key_id = $2 WHERE key_id = $1', [
      p.keyId,
      rootKeyId(root.spkiDer),
    ]);
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
  });

  it('a signature by the root over other bytes (a scope signature on a key row) is refused', async () => {
    const p = await r.principal('mallory-f', r.adminRoleUrl);
    const keyRow = await r.admin.query<{ nb: string; na: string }>(
      `SELECT to_char(not_before AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS nb,
              to_char(not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS na
       FROM principal_signing_keys WHERE key_id = $1`,
      [p.keyId],
    );
    const w = { notBefore: parseTimestamp(keyRow.rows[0]!.nb), notAfter: parseTimestamp(keyRow.rows[0]!.na) };
    // Sanity: the honest bytes would verify; the attacker only ever gets a root signature over scope bytes.
    expect(
      canonicalPrincipalKeyBytes({
        keyId: p.keyId,
        algorithm: 'ecdsa_p256_sha256',
        spkiDer: p.key.spkiDer,
        ...w,
      }).length,
    ).toBeGreaterThan(0);
    const scopeSig = sign(
      'sha256',
      canonicalScopeBytes({
        signingKeyId: p.keyId,
        signingKeySpkiDer: p.key.spkiDer,
        destination: DEST,
        ...w,
      }),
      {
        key: root.privateKey,
        dsaEncoding: 'der',
      },
    );
    await asAdmin(
      'UPDATE principal_signing_keys SET root_key_id = $2, root_signature = $3 WHERE key_id = $1',
      [p.keyId, rootKeyId(root.spkiDer), scopeSig],
    );
    expect(await r.connect(p.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
  });
});
