// Self-test of the test infrastructure: the shared PostgreSQL, a private cluster that stops and starts,
// a real swtpm + abrmd with a tpm2-pkcs11 key, and the process helpers.
import { createPublicKey } from 'node:crypto';
import { existsSync } from 'node:fs';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { freePort, isPortFree, waitForPort } from '../../dev-support/ports.js';
import { applyMigrations, createDatabase, dropDatabase, startPostgres } from '../../dev-support/postgres.js';
import { addKey, processAlive, provisionToken, readPublicSpki, startSwtpm } from '../../dev-support/swtpm.js';
import { spawnProcess } from '../support/processes.js';

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

describe('postgres support', () => {
  const adminUrl = inject('pgAdminUrl');
  const created: string[] = [];
  afterAll(async () => {
    for (const url of created) await dropDatabase(adminUrl, url);
  });

  it('provides a reachable shared cluster on loopback', async () => {
    expect(adminUrl).toMatch(/^postgres(ql)?:\/\//);
    const rows = await query<{ one: number }>(adminUrl, 'select 1 as one');
    expect(rows).toEqual([{ one: 1 }]);
  });

  it('createDatabase gives each caller a fresh, separate database', async () => {
    const a = await createDatabase(adminUrl, 'support-test');
    const b = await createDatabase(adminUrl, 'support-test');
    created.push(a, b);
    expect(a).not.toBe(b);
    await query(a, 'create table only_in_a (x int)');
    const inA = await query<{ n: string }>(
      a,
      "select count(*) as n from pg_tables where tablename = 'only_in_a'",
    );
    const inB = await query<{ n: string }>(
      b,
      "select count(*) as n from pg_tables where tablename = 'only_in_a'",
    );
    expect(inA[0]?.n).toBe('1');
    expect(inB[0]?.n).toBe('0');
    const [{ db } = { db: '' }] = await query<{ db: string }>(a, 'select current_database() as db');
    expect(db).toMatch(/^support_test_[0-9a-f]{8}$/);
  });

  it('applyMigrations runs the project migration runner once', async () => {
    const url = await createDatabase(adminUrl, 'support_migrations');
    created.push(url);
    const applied = await applyMigrations(url);
    expect(applied.length).toBeGreaterThan(0);
    expect(applied.every((name) => /^\d{4}_.+\.sql$/.test(name))).toBe(true);
    expect(await applyMigrations(url)).toEqual([]);
  });

  it('a private cluster can be stopped and started again on the same port', async () => {
    const own = await startPostgres();
    try {
      expect(own.external).toBe(false);
      expect(own.url).toContain(`127.0.0.1:${own.port}`);
      expect(await query<{ v: number }>(own.url, 'select 2 as v')).toEqual([{ v: 2 }]);
      await own.stop();
      await expect(query(own.url, 'select 1')).rejects.toThrow();
      await own.start();
      expect(await query<{ v: number }>(own.url, 'select 3 as v')).toEqual([{ v: 3 }]);
    } finally {
      await own.destroy();
    }
    expect(existsSync(own.dir)).toBe(false);
    expect(await isPortFree(own.port)).toBe(true);
  });
});

describe('ports and processes support', () => {
  it('freePort / waitForPort / spawnProcess / waitForLog / stop', async () => {
    const port = await freePort();
    const script = `
      const net = require('node:net');
      const s = net.createServer((c) => c.end()).listen(${port}, '127.0.0.1', () => {
        console.log(JSON.stringify({ msg: 'listening', port: ${port} }));
        console.error('plain stderr line');
      });
      process.on('SIGTERM', () => s.close(() => process.exit(7)));
    `;
    const proc = spawnProcess(process.execPath, ['-e', script], { name: 'tiny-server' });
    const line = await proc.waitForLog((l) => l.json?.['msg'] === 'listening', 10_000);
    expect(line.json?.['port']).toBe(port);
    await waitForPort(port, 5000);
    await proc.waitForLog('plain stderr line', 5000);
    expect(proc.lines.some((l) => l.stream === 'stderr' && l.json === undefined)).toBe(true);
    expect(await proc.stop('SIGTERM')).toBe(7);
    await expect(proc.waitForLog('never printed', 1000)).rejects.toThrow(/exited/);
  });
});

describe('swtpm support', () => {
  it('starts a TPM, provisions a token, adds a P-256 key, reads its SPKI, and stops cleanly', async () => {
    const tpm = await startSwtpm();
    let stopped = false;
    try {
      expect(tpm.ctrlPort).toBe(tpm.port + 1);
      expect(tpm.env.TPM2TOOLS_TCTI).toBe('tabrmd:bus_type=session');
      expect(tpm.env.DBUS_SESSION_BUS_ADDRESS).toContain(tpm.dir);
      expect(tpm.env.TPM2_PKCS11_STORE.startsWith(tpm.dir)).toBe(true);
      expect(existsSync(tpm.env.PKCS11_MODULE_PATH)).toBe(true);
      expect(tpm.env.TPM2_PKCS11_MODULE).toBe(tpm.env.PKCS11_MODULE_PATH);
      expect(existsSync(`${tpm.env.OPENSSL_ENGINES}/pkcs11.so`)).toBe(true);
      for (const pid of Object.values(tpm.pids)) expect(processAlive(pid)).toBe(true);

      await provisionToken(tpm, { token: 'support-test', userPin: '1234', soPin: '5678' });
      await addKey(tpm, { token: 'support-test', label: 'agent-key', userPin: '1234' });
      const spki = readPublicSpki(tpm, { token: 'support-test', label: 'agent-key' });
      expect(spki.length).toBe(91);
      const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
      expect(key.asymmetricKeyType).toBe('ec');
      expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      // Same key read twice: same bytes.
      expect(readPublicSpki(tpm, { token: 'support-test', label: 'agent-key' }).equals(spki)).toBe(true);
      expect(() => readPublicSpki(tpm, { token: 'support-test', label: 'no-such-key' })).toThrow(
        /pkcs11-tool/,
      );

      await tpm.stop();
      stopped = true;
      for (const pid of Object.values(tpm.pids)) expect(processAlive(pid)).toBe(false);
      expect(existsSync(tpm.dir)).toBe(false);
      expect(await isPortFree(tpm.port)).toBe(true);
      expect(await isPortFree(tpm.ctrlPort)).toBe(true);
    } finally {
      if (!stopped) await tpm.stop();
    }
  }, 120_000);
});
