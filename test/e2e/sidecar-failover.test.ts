// The sidecar across two gateways (docs/contract.md "Sidecar"): the real sidecar (key in a real swtpm
// behind tpm2-abrmd) given `--gateway A --gateway B`, two real gateway processes on one PostgreSQL
// registry, and a well-behaved agent that keeps opening tunnels. One gateway is killed (SIGKILL) between
// CONNECTs, later the other is drained (SIGTERM) under load; the agent never sees a CONNECT fail, and a tunnel open on
// the draining gateway keeps carrying bytes until it is closed. Against a sidecar that knows one gateway
// (the last --gateway) the drain phase answers 503/502 and this fails.
// Needs `npm run build` (dist/sidecar/main.js, dist/gateway/main.js).
import { readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createPrincipalKey, createTestCa } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { GATEWAY_MAIN, type GatewayProcess, makeTempDir, startGatewayProcess } from '../support/gateway.js';
import { type ManagedProcess, spawnNode } from '../support/processes.js';
import { type SidecarKey, startSidecarTpm } from '../support/sidecar.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const IDENTITY = 'agent-sidecar-failover';

/** CONNECT through the sidecar; resolves with the status line's code, the socket left open on 200. */
function connectThrough(
  sidecarPort: number,
  authority: string,
): Promise<{ status: number; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: sidecarPort });
    let head = '';
    socket.setTimeout(20_000, () => socket.destroy(new Error(`no answer to CONNECT ${authority}`)));
    const onData = (d: Buffer) => {
      head += d.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.setTimeout(0);
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]), socket });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`closed before an answer: ${JSON.stringify(head)}`)));
    socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  });
}

/** Write `text` into an open tunnel to the echo destination and wait for it to come back. */
function echo(socket: net.Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(text);
  });
}

/**
 * An agent that opens tunnels back to back on `lanes` connections until stopped, checks each answer, and
 * closes each tunnel after one echo. Every status it got is kept.
 */
function startAgent(sidecarPort: number, authority: string, lanes = 3) {
  const statuses: number[] = [];
  const errors: string[] = [];
  let running = true;
  const lane = async () => {
    while (running) {
      try {
        const { status, socket } = await connectThrough(sidecarPort, authority);
        statuses.push(status);
        if (status === 200) await echo(socket, 'ping').catch(() => {});
        socket.destroy();
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
  };
  const done = Promise.all(Array.from({ length: lanes }, lane));
  return {
    statuses,
    errors,
    async stop() {
      running = false;
      await done;
    },
  };
}

const allowedCount = (gw: ManagedProcess) =>
  gw.lines.filter((l) => l.json?.['msg'] === 'CONNECT allowed').length;

async function waitUntil(what: string, fn: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.sequential('sidecar failover between two gateways', () => {
  const adminUrl = inject('pgAdminUrl');
  let dir: string;
  let key: SidecarKey;
  let dbUrl: string;
  let echoServer: Upstream;
  let gwA: GatewayProcess;
  let gwB: GatewayProcess;
  let gwARestarted: ManagedProcess | undefined;
  let sidecar: ManagedProcess;
  let sidecarPort: number;
  let authority: string;

  beforeAll(async () => {
    dir = await makeTempDir('agw-sidecar-failover-');
    [key, echoServer] = await Promise.all([startSidecarTpm(dir, IDENTITY), startEchoServer()]);
    const made = await key.provision();
    expect(made.code, made.stderr + made.stdout).toBe(0);
    const spkiDer = await readFile(key.spkiPath);
    dbUrl = await createMigratedDatabase(adminUrl, 'sidecar_failover');
    authority = `localhost:${echoServer.port}`;
    await grant(dbUrl, {
      principalId: 'org-sidecar-failover',
      principal: createPrincipalKey(),
      identity: IDENTITY,
      subjectSpkiDer: spkiDer,
      destination: authority,
    });
    const ca = await createTestCa();
    // A long drain, so the tunnel left open on the draining gateway is ended by the agent, not the deadline.
    const config = { server: { drain_timeout_ms: 30_000 }, observability: { log_level: 'info' } };
    [gwA, gwB] = await Promise.all([
      startGatewayProcess({ databaseUrl: dbUrl, ca, config }),
      startGatewayProcess({ databaseUrl: dbUrl, ca, config }),
    ]);
    const caPath = path.join(dir, 'gateway-ca.pem');
    await writeFile(caPath, ca.certPem);
    sidecarPort = await freePort();
    const args = [
      ...key.runArgs({ port: gwA.port, caPath }, { '--listen': `127.0.0.1:${sidecarPort}` }),
      '--gateway',
      `127.0.0.1:${gwB.port}`,
    ];
    sidecar = key.spawn(args);
    await sidecar.waitForLog((l) => l.json?.['msg'] === 'sidecar listening', 30_000);
  }, 180_000);

  afterAll(async () => {
    await sidecar?.stop('SIGTERM', 15_000);
    await gwARestarted?.stop('SIGTERM', 15_000);
    await Promise.all([gwA?.cleanup(), gwB?.cleanup()]);
    await key?.tpm.stop();
    await echoServer?.close();
    if (dbUrl !== undefined) await dropDatabase(adminUrl, dbUrl).catch(() => {});
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('uses the first gateway only while it works', async () => {
    const agent = startAgent(sidecarPort, authority);
    await waitUntil('20 tunnels', () => agent.statuses.length >= 20);
    await agent.stop();
    expect(agent.errors).toEqual([]);
    expect(new Set(agent.statuses)).toEqual(new Set([200]));
    // The gateway's log lines are read asynchronously: wait for them, not just the agent's answers.
    await waitUntil('A logged 20 allowed', () => allowedCount(gwA.proc) >= 20);
    expect(allowedCount(gwB.proc)).toBe(0);
  });

  it('a killed gateway: CONNECTs after the kill go to the other one, none fails', async () => {
    // A CONNECT in flight when its gateway dies may have been processed there (the destination dialled),
    // so the sidecar does not send it again: the agent gets the failure (docs/contract.md "Sidecar").
    // Every CONNECT after the kill finds the connection gone or A refusing connections, neither of which
    // the gateway can have processed, so it goes to B and none fails.
    const closedLines = () => sidecar.lines.filter((l) => l.json?.['msg'] === 'gateway connection closed');
    const warm = startAgent(sidecarPort, authority);
    await waitUntil('tunnels through A', () => warm.statuses.length >= 10);
    await warm.stop();
    const closedBefore = closedLines().length;
    await gwA.stop('SIGKILL');
    await waitUntil('the sidecar saw A go', () => closedLines().length > closedBefore);
    const agent = startAgent(sidecarPort, authority);
    await waitUntil('tunnels through B', () => allowedCount(gwB.proc) >= 20);
    await agent.stop();
    expect(warm.errors).toEqual([]);
    expect(agent.errors).toEqual([]);
    expect(agent.statuses.length).toBeGreaterThanOrEqual(20);
    expect(agent.statuses.filter((s) => s !== 200)).toEqual([]);
  });

  it('a draining gateway: open tunnels keep running there, new CONNECTs go to the other, none fails', async () => {
    // A is back on its address; the sidecar stays on B until B drains.
    gwARestarted = spawnNode(GATEWAY_MAIN, ['--config', gwA.configPath], { name: 'gateway-a-again' });
    await gwARestarted.waitForLog((l) => l.json?.['msg'] === 'gateway listening', 30_000);

    const held = await connectThrough(sidecarPort, authority);
    expect(held.status).toBe(200);
    expect(await echo(held.socket, 'before drain')).toBe('before drain');
    const onB = allowedCount(gwB.proc);

    const agent = startAgent(sidecarPort, authority);
    await waitUntil('tunnels through B', () => allowedCount(gwB.proc) >= onB + 10);
    const bExit = gwB.stop('SIGTERM');
    await gwB.waitForLogs('draining');
    await waitUntil('tunnels through A', () => allowedCount(gwARestarted as ManagedProcess) >= 20);
    await agent.stop();
    expect(agent.errors).toEqual([]);
    expect(agent.statuses.filter((s) => s !== 200)).toEqual([]);

    // The tunnel opened on B before the drain still carries bytes, and B waits for it.
    expect(await echo(held.socket, 'during drain')).toBe('during drain');
    expect(gwB.proc.exitInfo()).toBeNull();
    held.socket.end();
    expect(await bExit).toBe(0);
    expect(gwB.logs('drain deadline reached; resetting open tunnels')).toEqual([]);
  }, 60_000);
});
