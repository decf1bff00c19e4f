// The registry as the gateway reads it: microsecond timestamps through the candidate query, and the
// startup schema gate. Real PostgreSQL (shared cluster, own databases). Migrations, roles and NOTIFY
// payloads are in registry-schema-migrations.test.ts.
import { describe, expect, it } from 'vitest';
import { latestKnownVersion } from '../../core/migrate.js';
import { decide } from '../../core/policy.js';
import { fetchActiveCandidates } from '../../core/registry-queries.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { Registry, RegistrySchemaError } from '../../gateway/registry.js';
import { cachingVerifier } from '../../gateway/signature-verifier.js';
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

describe('candidate query', () => {
  it('returns timestamps with all six fractional digits, and the signature over them verifies', async () => {
    const url = await freshDb('reg_micros');
    const c = await connect(url);
    const signer = newP256();
    const agent = newP256();
    const notBefore = parseTimestamp('2026-05-01T00:00:00.123456Z');
    const notAfter = parseTimestamp('2126-05-01T00:00:00.000001Z');
    await insertSigner(
      c,
      'org-m',
      signer.spkiDer,
      parseTimestamp('2026-01-01T00:00:00.000000Z'),
      notAfter + DAY,
    );
    await insertScope(
      c,
      'org-m',
      'api.example.com:443',
      parseTimestamp('2026-01-01T00:00:00.999999Z'),
      notAfter,
    );
    const spec = {
      permissionId: 'perm-m',
      signingKeyId: 'org-m',
      subjectIdentity: 'agent-alpha',
      subjectSpkiDer: agent.spkiDer,
      destination: 'api.example.com:443',
      notBefore,
      notAfter,
    };
    await insertPermission(c, spec, signer.privateKey);
    // The value as an admin would type it, in a non-UTC session: PostgreSQL keeps microseconds.
    await c.query("SET TIME ZONE 'America/New_York'");
    await c.query(
      "UPDATE permission_registry SET not_before = '2026-05-01 00:00:00.123456+00' WHERE permission_id = 'perm-m'",
    );

    const request = { identity: 'agent-alpha', spkiDer: agent.spkiDer, destination: 'api.example.com:443' };
    const now = nowTruncated();
    const rows = await fetchActiveCandidates(c, request, now);
    expect(rows).toHaveLength(1);
    const row = rows[0]!;
    expect(row.permission.notBefore).toBe('2026-05-01T00:00:00.123456Z');
    expect(row.permission.notAfter).toBe('2126-05-01T00:00:00.000001Z');
    expect(row.scope?.notBefore).toBe('2026-01-01T00:00:00.999999Z');
    expect(row.permission.revokedAt).toBeNull();
    const d = decide(request, rows, now, cachingVerifier(4));
    expect(d.allow ? 'allow' : `${d.reason}: ${d.detail}`).toBe('allow');

    // Through Date (node-postgres' default), the same value loses its last three digits.
    const viaDate = await c.query<{ nb: Date }>(
      "SELECT not_before AS nb FROM permission_registry WHERE permission_id = 'perm-m'",
    );
    expect(viaDate.rows[0]!.nb.toISOString()).toBe('2026-05-01T00:00:00.123Z');

    // The gateway's pool runs the same (prepared) query.
    const registry = registryFor(url);
    try {
      for (let i = 0; i < 3; i++) {
        const again = await registry.activeCandidates(request, now);
        expect(again[0]?.permission.notBefore).toBe('2026-05-01T00:00:00.123456Z');
      }
    } finally {
      await registry.close();
    }
  });
});

describe('startup schema gate', () => {
  it('refuses a database without the registry', async () => {
    const url = await freshDb('reg_gate_empty', false);
    const registry = registryFor(url);
    try {
      await expect(registry.checkSchema()).rejects.toThrow(RegistrySchemaError);
      await expect(registry.checkSchema()).rejects.toThrow(/schema missing/);
      expect((await registry.ping()).ok).toBe(false);
    } finally {
      await registry.close();
    }
  });

  it('refuses a version it does not know', async () => {
    const url = await freshDb('reg_gate_future');
    const c = await connect(url);
    await c.query('INSERT INTO agent_gateway_schema_version (version) VALUES ($1)', [
      latestKnownVersion() + 1,
    ]);
    const registry = registryFor(url);
    try {
      await expect(registry.checkSchema()).rejects.toThrow(/version \d+ is not one this gateway knows/);
      expect(await registry.ping()).toMatchObject({ ok: false });
    } finally {
      await registry.close();
    }
  });

  it('accepts a registry without notifications (version 2) and says to poll', async () => {
    const url = await dbAtVersion('reg_gate_v2', 2);
    const warnings: string[] = [];
    const registry = new Registry({
      databaseUrl: url,
      maxConnections: 1,
      connectTimeoutMs: 2000,
      poolAcquireTimeoutMs: 1000,
      queryTimeoutMs: 1000,
      latestKnownVersion: latestKnownVersion(),
      logger: { info() {}, debug() {}, error() {}, warn: (_o, msg) => warnings.push(msg) },
    });
    try {
      expect(await registry.checkSchema()).toEqual({ version: 2, notifications: false });
      expect(warnings.join('\n')).toMatch(/polling/);
    } finally {
      await registry.close();
    }
  });

  it('accepts a registry written for the original system (version 4) and decides on it', async () => {
    const url = await dbAtVersion('reg_gate_v4', 4);
    const c = await connect(url);
    const signer = newP256();
    const agent = newP256();
    const now = nowTruncated();
    await insertSigner(c, 'org-v4', signer.spkiDer, now - DAY, now + DAY);
    await insertScope(c, 'org-v4', 'api.example.com:443', now - DAY, now + DAY);
    const spec = {
      permissionId: 'perm-v4',
      signingKeyId: 'org-v4',
      subjectIdentity: 'agent-v4',
      subjectSpkiDer: agent.spkiDer,
      destination: 'api.example.com:443',
      notBefore: now - DAY,
      notAfter: now + DAY,
    };
    await insertPermission(c, spec, signer.privateKey);
    const registry = registryFor(url);
    try {
      expect(await registry.checkSchema()).toEqual({ version: 4, notifications: true });
      expect(await registry.ping()).toEqual({ ok: true, version: 4 });
      const request = { identity: 'agent-v4', spkiDer: agent.spkiDer, destination: 'api.example.com:443' };
      const d = decide(request, await registry.activeCandidates(request, now), now, cachingVerifier(4));
      expect(d.allow ? 'allow' : `${d.reason}: ${d.detail}`).toBe('allow');
    } finally {
      await registry.close();
    }
  });
});
