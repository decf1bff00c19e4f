// The sidecar end to end, running: curl as the agent through the sidecar, its key in a real swtpm (behind
// tpm2-abrmd), to the real gateway process, a real PostgreSQL registry with a signed grant, and an HTTPS
// destination with its own CA; a tiny OTLP/gRPC receiver records what both processes export (set-up in
// test/support/sidecar-suite.ts). Tunnels, traces, one connection for many agents, gateway outages,
// draining, restarts, and losing the TPM. The key and start-up checks are in sidecar-startup.test.ts.
// Needs `npm run build` (dist/sidecar/main.js, dist/gateway/main.js).
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { accessRequestId } from '../../core/access-request-id.js';
import { freePort } from '../../dev-support/ports.js';
import { runCommand } from '../../dev-support/run-command.js';
import type { TpmHandle } from '../../dev-support/swtpm.js';
import { GATEWAY_MAIN, type GatewayProcess } from '../support/gateway.js';
import { type ManagedProcess, spawnNode } from '../support/processes.js';
import { curl, type Destination, rawConnect, type SidecarKey, waitFor } from '../support/sidecar.js';
import { type OtlpReceiver, type SidecarSuite, startSidecarSuite } from '../support/sidecar-suite.js';

const IDENTITY = 'agent-sidecar-e2e';

function established(port: number): Promise<number> {
  return runCommand('ss', ['-Htn', 'state', 'established', `( sport = :${port} )`]).then(
    (r) => r.stdout.split('\n').filter((l) => l.trim() !== '').length,
  );
}

describe.sequential('sidecar with a TPM key, end to end', () => {
  const adminUrl = inject('pgAdminUrl');
  let suite: SidecarSuite;
  let key: SidecarKey;
  let tpm: TpmHandle;
  let gw: GatewayProcess;
  let gwRestarted: ManagedProcess | undefined;
  let destination: Destination;
  let otlp: OtlpReceiver;
  let spkiDer: Buffer;
  let sidecar: ManagedProcess | undefined;
  let sidecarPort: number;
  let sidecarArgs: SidecarSuite['sidecarArgs'];
  let spawnSidecar: SidecarSuite['spawnSidecar'];
  const tracingEnv = () => ({
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${otlp.port}`,
    OTEL_BSP_SCHEDULE_DELAY: '200',
  });

  async function startSidecar(
    env: Record<string, string | undefined> = tracingEnv(),
  ): Promise<ManagedProcess> {
    const proc = spawnSidecar(sidecarArgs(), env);
    await proc.waitForLog((l) => l.json?.['msg'] === 'sidecar listening', 30_000);
    sidecar = proc;
    return proc;
  }

  const provision = () => key.provision();

  /** curl through the sidecar, printing only the status of the proxy's CONNECT answer. */
  const curlConnectStatus = (url: string) =>
    curl([
      '-x',
      `http://127.0.0.1:${sidecarPort}`,
      '-o',
      '/dev/null',
      '-w',
      '%{http_connect}',
      '--cacert',
      destination.caPath,
      url,
    ]);

  const curlHello = (extra: string[] = []) =>
    curl([
      '-x',
      `http://127.0.0.1:${sidecarPort}`,
      '--cacert',
      destination.caPath,
      `https://localhost:${destination.port}/hello`,
      ...extra,
    ]);

  beforeAll(async () => {
    suite = await startSidecarSuite(adminUrl, 'sidecar_tunnels_e2e', IDENTITY);
    ({ key, tpm, gw, destination, otlp, spkiDer, sidecarPort, sidecarArgs, spawnSidecar } = suite);
  }, 240_000);

  afterAll(async () => {
    await sidecar?.stop('SIGKILL');
    await gwRestarted?.stop();
    await suite?.stop();
  });

  it('tunnels curl to an allowed HTTPS destination end to end, TLS inside the tunnel', async () => {
    await startSidecar();
    const r = await curlHello();
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('hello through the TPM-authenticated tunnel\n');
    const allowed = (await gw.waitForLogs('CONNECT allowed')).at(-1);
    expect(allowed?.['source_identity']).toBe(IDENTITY);
    expect(allowed?.['dest_authority']).toBe(`localhost:${destination.port}`);
    // The gateway saw the TPM key: its SPKI is what the signed grant names.
    const established = sidecar?.lines.find(
      (l) => l.json?.['msg'] === 'gateway connection established',
    )?.json;
    expect(established?.['tls_protocol']).toBe('TLSv1.3');
  });

  it("answers 403 for a destination without a grant with the gateway's reason, request id and what to do", async () => {
    const other = await freePort();
    const r = await curlConnectStatus(`https://localhost:${other}/`);
    expect(r.code).toBe(56);
    expect(r.stdout).toBe('403');
    // The agent names the destination as it likes; the line names it as the request row does.
    const raw = await rawConnect(sidecarPort, `LOCALHOST:${other}`);
    const requestId = accessRequestId(IDENTITY, spkiDer, `localhost:${other}`);
    expect(raw.status).toBe(403);
    const headers = raw.headers.split('\r\n');
    expect(headers).toContain('agent-gateway-deny-reason: no_permission');
    expect(headers).toContain(`agent-gateway-request-id: ${requestId}`);
    expect(raw.body).toBe(
      `access to localhost:${other} requested as ${requestId}; ask a principal to approve it\n`,
    );
    const denied = (await gw.waitForLogs('CONNECT denied')).at(-1);
    expect(denied?.['source_identity']).toBe(IDENTITY);
    expect(denied?.['request_id']).toBe(requestId);
    // What an agent running curl reads (curl -v prints the proxy's response headers).
    const verbose = await curl([
      '-v',
      '-x',
      `http://127.0.0.1:${sidecarPort}`,
      `https://localhost:${other}/`,
    ]);
    expect(verbose.stderr).toContain(`< agent-gateway-request-id: ${requestId}`);
  });

  it('answers 405 to plain HTTP proxy requests', async () => {
    const r = await curl([
      '-x',
      `http://127.0.0.1:${sidecarPort}`,
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      'http://example.com/',
    ]);
    expect(r.stdout).toBe('405');
  });

  it('continues the trace: the gateway logs and exports the trace id the sidecar started', async () => {
    const r = await curlHello();
    expect(r.code, r.stderr).toBe(0);
    const open = sidecar?.lines.filter((l) => l.json?.['msg'] === 'tunnel open').at(-1)?.json;
    const traceId = String(open?.['trace_id']);
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    await waitFor('gateway log with the trace id', () =>
      gw.logs('CONNECT allowed').some((l) => l['trace_id'] === traceId),
    );
    // Both processes exported a span of that trace to the collector.
    const idBytes = Buffer.from(traceId, 'hex');
    const exported = (name: string) =>
      otlp.requests.some((b) => b.includes(idBytes) && b.includes(Buffer.from(name)));
    await waitFor('sidecar span exported', () => exported('sidecar CONNECT'));
    await waitFor('gateway span exported', () => exported('gateway CONNECT'));
  });

  it('multiplexes 50 concurrent agent connections over one TLS connection to the gateway', async () => {
    const connectionsBefore = sidecar?.lines.filter(
      (l) => l.json?.['msg'] === 'gateway connection established',
    ).length;
    const allowedBefore = gw.logs('CONNECT allowed').length;
    const curls = Array.from({ length: 50 }, () =>
      curl([
        '-x',
        `http://127.0.0.1:${sidecarPort}`,
        '--cacert',
        destination.caPath,
        `https://localhost:${destination.port}/slow?ms=2500`,
      ]),
    );
    // While every request waits on the slow destination, all 50 tunnels are open at once.
    await waitFor('50 open tunnels at the gateway', async () => {
      const opened = gw.logs('CONNECT allowed').length - allowedBefore;
      return opened >= 50 ? true : undefined;
    });
    const atGateway = await established(gw.port);
    const metrics = await fetch(`http://127.0.0.1:${gw.adminPort}/metrics`).then((res) => res.text());
    const results = await Promise.all(curls);
    for (const r of results) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe('slow done\n');
    }
    expect(atGateway).toBe(1);
    expect(/^agent_gateway_connections_open(?:\{[^}]*\})? (\d+)/m.exec(metrics)?.[1]).toBe('1');
    const connectionsAfter = sidecar?.lines.filter(
      (l) => l.json?.['msg'] === 'gateway connection established',
    ).length;
    expect(connectionsAfter).toBe(connectionsBefore);
  }, 60_000);

  it('answers 502 "gateway unreachable" while the gateway is down and recovers when it returns', async () => {
    expect(await gw.stop()).toBe(0);
    const down = await rawConnect(sidecarPort, `localhost:${destination.port}`);
    expect(down).toMatchObject({ status: 502, body: 'gateway unreachable' });
    const viaCurl = await curlConnectStatus(`https://localhost:${destination.port}/hello`);
    expect(viaCurl.stdout).toBe('502');

    gwRestarted = spawnNode(GATEWAY_MAIN, ['--config', gw.configPath], { name: 'gateway-again' });
    await gwRestarted.waitForLog((l) => l.json?.['msg'] === 'gateway listening', 30_000);
    const r = await curlHello();
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('hello through the TPM-authenticated tunnel\n');
  });

  it('drains on SIGTERM: no new agents, open tunnels finish, exit 0', async () => {
    const proc = sidecar as ManagedProcess;
    const slow = curl([
      '-x',
      `http://127.0.0.1:${sidecarPort}`,
      '--cacert',
      destination.caPath,
      `https://localhost:${destination.port}/slow?ms=2000`,
    ]);
    await waitFor('slow tunnel open', () =>
      proc.lines.filter((l) => l.json?.['msg'] === 'tunnel open').length >= 1 ? true : undefined,
    );
    await new Promise((r) => setTimeout(r, 300));
    proc.child.kill('SIGTERM');
    await proc.waitForLog((l) => l.json?.['msg'] === 'draining: no new CONNECTs, waiting for open tunnels');
    const refused = await curlHello();
    expect(refused.code).not.toBe(0);
    const done = await slow;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toBe('slow done\n');
    const info = await proc.exited;
    expect(info.code).toBe(0);
    expect(proc.lines.find((l) => l.json?.['msg'] === 'sidecar stopped')?.json?.['tunnels_cut']).toBe(0);
    sidecar = undefined;
  });

  it('keeps the same TPM key across provisioning runs and sidecar restarts', async () => {
    const again = await provision();
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('reusing the persistent TPM key');
    expect((await readFile(key.spkiPath)).equals(spkiDer)).toBe(true);
    const proc = await startSidecar({});
    const hash = `sha256:${createHash('sha256').update(spkiDer).digest('hex')}`;
    expect(proc.lines.find((l) => l.json?.['msg'] === 'sidecar listening')?.json?.['spki_sha256']).toBe(hash);
    const r = await curlHello();
    expect(r.code, r.stderr).toBe(0);
  });

  it('exits non-zero, naming the TPM, when the TPM stops signing while running', async () => {
    const proc = sidecar as ManagedProcess;
    expect((await curlHello()).code).toBe(0);
    // The TPM goes away, and the gateway connection with it (so the next CONNECT needs a new handshake).
    process.kill(tpm.pids.swtpm, 'SIGKILL');
    await gwRestarted?.stop();
    gwRestarted = spawnNode(GATEWAY_MAIN, ['--config', gw.configPath], { name: 'gateway-third' });
    await gwRestarted.waitForLog((l) => l.json?.['msg'] === 'gateway listening', 30_000);
    await curlHello();
    const info = await proc.exited;
    expect(info.code).toBe(4);
    const fatal = proc.lines.find((l) => l.json?.['level'] === 'fatal')?.json;
    expect(fatal?.['reason']).toBe('tpm_signing_failed');
    sidecar = undefined;
  });
});
