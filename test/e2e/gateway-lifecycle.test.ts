// The gateway process as an operator sees it: startup refusals and their exit codes, SIGTERM drain,
// SIGHUP certificate reload, and the node:cluster mode.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  type Carrier,
  createCarrier,
  createPrincipalKey,
  createTestCa,
  type TestCa,
} from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import {
  applyMigrations,
  createDatabase,
  createMigratedDatabase,
  dropDatabase,
} from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { runCommand } from '../../dev-support/run-command.js';
import {
  closed,
  closeSession,
  connectH2,
  GATEWAY_MAIN,
  makeTempDir,
  openTunnel,
  roundTrip,
  startGatewayProcess,
  writeGatewayConfig,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const adminUrl = inject('pgAdminUrl');

async function runGateway(configPath: string, env: Record<string, string> = {}) {
  return runCommand(process.execPath, [GATEWAY_MAIN, '--config', configPath], {
    env: { ...process.env, ...env },
    timeoutMs: 30_000,
  });
}

function fingerprintOf(session: { socket: unknown }): string | undefined {
  return (session.socket as TLSSocket).getPeerX509Certificate()?.fingerprint256;
}

async function readyz(port: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`);
  await res.arrayBuffer();
  return res.status;
}

describe('startup refusals', () => {
  const created: string[] = [];
  let dir: string;
  let ca: TestCa;
  let certPath: string;
  let keyPath: string;

  beforeAll(async () => {
    dir = await makeTempDir();
    ca = await createTestCa();
    const pair = await ca.serverCert();
    certPath = path.join(dir, 'server.pem');
    keyPath = path.join(dir, 'server-key.pem');
    await writeFile(certPath, pair.certPem);
    await writeFile(keyPath, pair.keyPem);
  });
  afterAll(async () => {
    for (const url of created) await dropDatabase(adminUrl, url);
  });

  const baseConfig = async (databaseUrl: string, extra: Record<string, Record<string, unknown>> = {}) => {
    const port = await freePort();
    const sections: Record<string, Record<string, unknown>> = {
      server: {
        listen_addr: `127.0.0.1:${port}`,
        tls_cert_path: certPath,
        tls_key_path: keyPath,
        workers: 1,
      },
      admin: { listen_addr: '' },
      observability: { log_level: 'info' },
      policy: { database_url: databaseUrl, connect_timeout_ms: 1000 },
    };
    for (const [k, v] of Object.entries(extra)) sections[k] = { ...(sections[k] ?? {}), ...v };
    return writeGatewayConfig(path.join(dir, `gw-${port}.toml`), sections);
  };

  it('exits 2 naming an unknown config key', async () => {
    const file = await baseConfig('postgresql://127.0.0.1:1/x', { upstream: { conect_timeout_ms: 5 } });
    const r = await runGateway(file);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('upstream.conect_timeout_ms');
    expect(r.stderr).toMatch(/unknown key/);
  });

  it('exits 2 when --config is missing or the file does not exist', async () => {
    const none = await runCommand(process.execPath, [GATEWAY_MAIN], { timeoutMs: 30_000 });
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--config/);
    const missing = await runGateway(path.join(dir, 'nope.toml'));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('nope.toml');
  });

  it('exits non-zero with a clear message when the registry schema is missing', async () => {
    const url = await createDatabase(adminUrl, 'gw_no_schema');
    created.push(url);
    const r = await runGateway(await baseConfig(url));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/registry schema missing/);
  });

  it('exits non-zero when the registry schema version is newer than this build', async () => {
    const url = await createDatabase(adminUrl, 'gw_future_schema');
    created.push(url);
    await applyMigrations(url);
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('INSERT INTO agent_gateway_schema_version (version) VALUES (999)');
    await c.end();
    const r = await runGateway(await baseConfig(url));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/schema version 999/);
  });

  it('exits non-zero when the database cannot be reached', async () => {
    const port = await freePort();
    const r = await runGateway(await baseConfig(`postgresql://postgres@127.0.0.1:${port}/none`));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot check the registry schema/);
  });

  it('exits non-zero when the TLS key does not match the certificate', async () => {
    const url = await createDatabase(adminUrl, 'gw_bad_tls');
    created.push(url);
    await applyMigrations(url);
    const other = await ca.serverCert();
    const wrongKey = path.join(dir, 'wrong-key.pem');
    await writeFile(wrongKey, other.keyPem);
    const r = await runGateway(await baseConfig(url, { server: { tls_key_path: wrongKey } }));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/does not belong to the certificate/);
  });
});

describe('running gateway: drain, reload, cluster', () => {
  let dbUrl: string;
  let echo: Upstream;
  let agent: Carrier;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'gateway_lifecycle');
    echo = await startEchoServer();
    agent = await createCarrier('agent-alpha');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'docstore:443',
    });
  });
  afterAll(async () => {
    await echo?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  const start = (extra: Record<string, Record<string, unknown>> = {}) =>
    startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        ...extra,
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` }, ...extra['upstream'] },
      },
    });

  it('SIGTERM with nothing open exits 0 at once', async () => {
    const gw = await start();
    try {
      const t0 = Date.now();
      expect(await gw.stop('SIGTERM')).toBe(0);
      expect(Date.now() - t0).toBeLessThan(5000);
      await gw.proc.waitForLog((l) => l.json?.['msg'] === 'drained');
    } finally {
      await gw.cleanup();
    }
  });

  it('SIGTERM drains: not ready at once, no new connections, the open tunnel finishes, then exit 0', async () => {
    const gw = await start({ server: { drain_timeout_ms: 20_000 } });
    let gwSession: Awaited<ReturnType<typeof connectH2>> | undefined;
    try {
      gwSession = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
      const t = await openTunnel(gwSession, 'docstore:443');
      expect(t.status).toBe(200);
      expect(await readyz(gw.adminPort!)).toBe(200);

      gw.proc.child.kill('SIGTERM');
      await gw.proc.waitForLog((l) => l.json?.['msg'] === 'draining');
      expect(await readyz(gw.adminPort!)).toBe(503);
      await expect(connectH2(gw.port, { ca: gw.caPem, carrier: agent })).rejects.toThrow();

      // The tunnel opened before SIGTERM still carries bytes.
      expect((await roundTrip(t.stream, Buffer.from('still here'))).toString()).toBe('still here');
      expect(gw.proc.exitInfo()).toBeNull();
      const t0 = Date.now();
      t.stream.end();
      await closed(t.stream);
      expect(await gw.stop()).toBe(0);
      expect(Date.now() - t0).toBeLessThan(5000);
      const line = gw.logs('tunnel closed')[0];
      expect(line).toMatchObject({ end_reason: 'closed', bytes_client_to_dest: 10 });
    } finally {
      if (gwSession) gwSession.destroy();
      await gw.cleanup();
    }
  });

  it('SIGTERM resets tunnels still open at drain_timeout_ms and exits 0', async () => {
    const gw = await start({ server: { drain_timeout_ms: 1000 } });
    const s = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    try {
      const t = await openTunnel(s, 'docstore:443');
      expect(t.status).toBe(200);
      const t0 = Date.now();
      gw.proc.child.kill('SIGTERM');
      await closed(t.stream, 10_000);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
      expect(await gw.stop()).toBe(0);
      expect(gw.logs('tunnel closed')[0]).toMatchObject({ end_reason: 'draining' });
    } finally {
      s.destroy();
      await gw.cleanup();
    }
  });

  it('SIGHUP swaps the certificate for new connections without breaking an open tunnel; a bad one is refused', async () => {
    const gw = await start();
    const first = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    try {
      const oldFingerprint = fingerprintOf(first);
      const t = await openTunnel(first, 'docstore:443');
      expect(t.status).toBe(200);

      const next = await gw.ca.serverCert({ cn: 'localhost' });
      await writeFile(gw.certPath, next.certPem);
      await writeFile(gw.keyPath, next.keyPem);
      gw.proc.child.kill('SIGHUP');
      await gw.proc.waitForLog((l) => l.json?.['msg'] === 'TLS certificate reloaded');

      expect((await roundTrip(t.stream, Buffer.from('same tunnel'))).toString()).toBe('same tunnel');
      const second = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
      const newFingerprint = fingerprintOf(second);
      expect(newFingerprint).toBeDefined();
      expect(newFingerprint).not.toBe(oldFingerprint);
      await closeSession(second);

      // A key that does not match: logged, old (second) certificate kept.
      const mismatched = await gw.ca.serverCert();
      await writeFile(gw.keyPath, mismatched.keyPem);
      gw.proc.child.kill('SIGHUP');
      const failure = await gw.proc.waitForLog(
        (l) => l.json?.['msg'] === 'TLS reload failed; keeping the previous certificate',
      );
      expect(String(failure.json?.['err'])).toMatch(/does not belong/);
      const third = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
      expect(fingerprintOf(third)).toBe(newFingerprint);
      await closeSession(third);

      expect((await roundTrip(t.stream, Buffer.from('still the same'))).toString()).toBe('still the same');
      t.stream.end();
      await closed(t.stream);
      expect(gw.proc.exitInfo()).toBeNull();
    } finally {
      first.destroy();
      await gw.cleanup();
    }
  });

  it('closes an HTTP/2 connection that has had no stream for session_idle_timeout_ms', async () => {
    const gw = await start({ server: { session_idle_timeout_ms: 800 } });
    try {
      const s = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
      const t = await openTunnel(s, 'docstore:443');
      // An open (even silent) tunnel keeps the connection.
      await new Promise((r) => setTimeout(r, 1200));
      expect(s.closed || s.destroyed).toBe(false);
      const goaway = new Promise<number>((resolve) => s.once('goaway', (code) => resolve(code)));
      t.stream.end();
      await closed(t.stream);
      expect(await goaway).toBe(0);
      s.destroy();
    } finally {
      await gw.cleanup();
    }
  });

  it('runs server.workers = 2 behind one port, aggregates metrics, drains on SIGTERM', async () => {
    const gw = await start({ server: { workers: 2 } });
    try {
      const sessions = await Promise.all(
        Array.from({ length: 6 }, () => connectH2(gw.port, { ca: gw.caPem, carrier: agent })),
      );
      for (const s of sessions) {
        const t = await openTunnel(s, 'docstore:443');
        expect(t.status).toBe(200);
        expect((await roundTrip(t.stream, Buffer.from('w'))).toString()).toBe('w');
        t.stream.end();
        await closed(t.stream);
      }
      await expect.poll(() => gw.logs('CONNECT allowed').length).toBeGreaterThanOrEqual(6);
      const pids = new Set(gw.logs('CONNECT allowed').map((l) => l['pid']));
      expect(pids.size).toBeGreaterThanOrEqual(1);
      const metrics = await (await fetch(`http://127.0.0.1:${gw.adminPort}/metrics`)).text();
      const total = /^agent_gateway_connections_total (\d+)/m.exec(metrics);
      expect(Number(total?.[1])).toBeGreaterThanOrEqual(6);
      expect(await readyz(gw.adminPort!)).toBe(200);
      for (const s of sessions) await closeSession(s);

      // A worker that dies is replaced; the port keeps serving meanwhile.
      const workerPids = gw.logs('worker listening').map((l) => Number(l['pid']));
      expect(new Set(workerPids).size).toBe(2);
      process.kill(workerPids[0]!, 'SIGKILL');
      await gw.proc.waitForLog((l) => l.json?.['msg'] === 'worker exited unexpectedly');
      await expect.poll(() => gw.logs('worker listening').length, { timeout: 20_000 }).toBe(3);
      const s = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
      expect((await openTunnel(s, 'docstore:443')).status).toBe(200);
      s.destroy();

      expect(await gw.stop('SIGTERM')).toBe(0);
    } finally {
      await gw.cleanup();
    }
  }, 60_000);

  it('a cluster whose schema check fails exits 1 before forking', async () => {
    const url = await createDatabase(adminUrl, 'gw_cluster_no_schema');
    try {
      const gw = await startGatewayProcess({
        databaseUrl: url,
        config: { server: { workers: 2 } },
        waitReady: false,
      });
      const info = await gw.proc.exited;
      expect(info.code).toBe(1);
      expect(gw.proc.lines.some((l) => /registry schema missing/.test(l.text))).toBe(true);
      await gw.cleanup();
    } finally {
      await dropDatabase(adminUrl, url);
    }
  });
});
