// The sidecar end to end: a real swtpm (behind tpm2-abrmd) holding the key, the real provisioning CLI, the
// real gateway process, a real PostgreSQL registry with signed grants, curl as the agent, an HTTPS
// destination with its own CA, and a tiny OTLP/gRPC receiver that records what both processes export.
// Needs `npm run build` (dist/sidecar/main.js, dist/gateway/main.js).
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createCarrier, createPrincipalKey, type PrincipalKey } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { runCommand } from '../../dev-support/run-command.js';
import type { TpmHandle } from '../../dev-support/swtpm.js';
import { GATEWAY_MAIN, type GatewayProcess, makeTempDir, startGatewayProcess } from '../support/gateway.js';
import { type ManagedProcess, spawnNode } from '../support/processes.js';
import {
  curl,
  type Destination,
  rawConnect,
  SIDECAR_HANDLE,
  SIDECAR_MAIN,
  SIDECAR_TOKEN,
  type SidecarKey,
  startHttpsDestination,
  startSidecarTpm,
  waitFor,
} from '../support/sidecar.js';

const IDENTITY = 'agent-sidecar-e2e';
const HANDLE = SIDECAR_HANDLE;
const TOKEN = SIDECAR_TOKEN;

type OtlpReceiver = { port: number; requests: Buffer[]; close(): Promise<void> };

/**
 * The OTLP trace service as raw bytes: enough to prove a span with a given trace id (16 raw bytes in the
 * protobuf) and name reached the collector, without decoding protobuf.
 */
async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const requests: Buffer[] = [];
  const server = new grpc.Server();
  const raw = (b: Buffer) => b;
  server.addService(
    {
      Export: {
        path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
        requestStream: false,
        responseStream: false,
        requestSerialize: raw,
        requestDeserialize: raw,
        responseSerialize: raw,
        responseDeserialize: raw,
      },
    },
    {
      Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
        requests.push(call.request);
        callback(null, Buffer.alloc(0));
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { port, requests, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) };
}

function established(port: number): Promise<number> {
  return runCommand('ss', ['-Htn', 'state', 'established', `( sport = :${port} )`]).then(
    (r) => r.stdout.split('\n').filter((l) => l.trim() !== '').length,
  );
}

describe.sequential('sidecar with a TPM key, end to end', () => {
  const adminUrl = inject('pgAdminUrl');
  let dir: string;
  let key: SidecarKey;
  let tpm: TpmHandle;
  let dbUrl: string;
  let gw: GatewayProcess;
  let gwRestarted: ManagedProcess | undefined;
  let destination: Destination;
  let otlp: OtlpReceiver;
  let principal: PrincipalKey;
  let spkiDer: Buffer;
  let sidecar: ManagedProcess | undefined;
  let sidecarPort: number;
  const tracingEnv = () => ({
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${otlp.port}`,
    OTEL_BSP_SCHEDULE_DELAY: '200',
  });

  function sidecarArgs(overrides: Record<string, string> = {}): string[] {
    return key.runArgs(
      { port: gw.port, caPath: path.join(dir, 'gateway-ca.pem') },
      { '--listen': `127.0.0.1:${sidecarPort}`, ...overrides },
    );
  }

  const spawnSidecar = (args: string[], env: Record<string, string | undefined> = {}) => key.spawn(args, env);

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
    for (const f of [SIDECAR_MAIN, GATEWAY_MAIN]) {
      if (!existsSync(f)) throw new Error(`${f} missing: run \`npm run build\` first`);
    }
    dir = await makeTempDir('agw-sidecar-e2e-');
    [key, otlp, destination] = await Promise.all([
      startSidecarTpm(dir, IDENTITY),
      startOtlpReceiver(),
      startHttpsDestination(dir),
    ]);
    tpm = key.tpm;

    const made = await provision();
    expect(made.code, made.stderr + made.stdout).toBe(0);
    spkiDer = await readFile(key.spkiPath);

    dbUrl = await createMigratedDatabase(adminUrl, 'sidecar_e2e');
    principal = createPrincipalKey();
    await grant(dbUrl, {
      principalId: 'org-sidecar-e2e',
      principal,
      identity: IDENTITY,
      subjectSpkiDer: spkiDer,
      destination: `localhost:${destination.port}`,
    });

    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: { observability: { log_level: 'info', otlp_endpoint: `http://127.0.0.1:${otlp.port}` } },
      env: { OTEL_BSP_SCHEDULE_DELAY: '200' },
    });
    await writeFile(path.join(dir, 'gateway-ca.pem'), gw.caPem);
    sidecarPort = await freePort();
  }, 240_000);

  afterAll(async () => {
    await sidecar?.stop('SIGKILL');
    await gwRestarted?.stop();
    await gw?.cleanup();
    await Promise.all([destination?.close(), otlp?.close()]);
    await tpm?.stop();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl).catch(() => {});
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('provisions a non-exportable P-256 key at the persistent handle, linked into the token', async () => {
    const pub = await runCommand('tpm2_readpublic', ['-c', HANDLE], { env: { ...process.env, ...tpm.env } });
    expect(pub.code).toBe(0);
    const attributes = /attributes:\s*\n\s+value:\s*(\S+)/.exec(pub.stdout)?.[1]?.split('|') ?? [];
    expect(attributes).toEqual(
      expect.arrayContaining(['fixedtpm', 'fixedparent', 'sensitivedataorigin', 'sign']),
    );
    expect(attributes).not.toContain('decrypt');
    // The token object for the handle is the same key (pkcs11-tool reads the public part, no PIN).
    const tokenPub = path.join(dir, 'token-pub.der');
    const r2 = await runCommand(
      'pkcs11-tool',
      [
        '--module',
        tpm.env.PKCS11_MODULE_PATH,
        '--token-label',
        TOKEN,
        '--read-object',
        '--type',
        'pubkey',
        '--label',
        HANDLE,
        '-o',
        tokenPub,
      ],
      { env: { ...process.env, ...tpm.env } },
    );
    expect(r2.code, r2.stderr).toBe(0);
    expect((await readFile(tokenPub)).equals(spkiDer)).toBe(true);
    // As a PKCS#11 object the private key is sensitive and was never extractable.
    const objects = await runCommand(
      'pkcs11-tool',
      [
        '--module',
        tpm.env.PKCS11_MODULE_PATH,
        '--token-label',
        TOKEN,
        '--login',
        '--pin',
        'user-pin-4711',
        '--list-objects',
        '--type',
        'privkey',
      ],
      { env: { ...process.env, ...tpm.env } },
    );
    expect(objects.code, objects.stderr).toBe(0);
    expect(objects.stdout).toContain(`label:      ${HANDLE}`);
    expect(objects.stdout).toMatch(/Access:\s+sensitive, always sensitive, never extractable, local/);
  });

  it('refuses to start on invalid flags, naming the flag', async () => {
    const bad = spawnSidecar(sidecarArgs({ '--tpm-key-handle': '0x80000001' }));
    expect((await bad.exited).code).toBe(2);
    expect(bad.tail()).toContain('--tpm-key-handle 0x80000001 is outside the persistent range');
  });

  it('refuses to start with a certificate for another key', async () => {
    const other = await createCarrier(IDENTITY);
    const swapped = path.join(dir, 'swapped.pem');
    await writeFile(swapped, other.certPem);
    const proc = spawnSidecar(sidecarArgs({ '--client-cert': swapped }));
    const info = await proc.exited;
    expect(info.code).toBe(3);
    const fatal = proc.lines.find((l) => l.json?.['level'] === 'fatal')?.json;
    expect(fatal?.['reason']).toBe('certificate_key_mismatch');
    expect(String(fatal?.['err'])).toMatch(/is not the TPM key|carries public key/);
  });

  it('refuses to start when the TPM is unreachable', async () => {
    const closed = await freePort();
    const proc = spawnSidecar(sidecarArgs({ '--tpm-tcti': `swtpm:host=127.0.0.1,port=${closed}` }));
    const info = await proc.exited;
    expect(info.code).toBe(3);
    const fatal = proc.lines.find((l) => l.json?.['level'] === 'fatal')?.json;
    expect(fatal?.['reason']).toBe('tpm_unreachable');
    expect(String(fatal?.['err'])).toContain('TPM unreachable');
  });

  it('refuses to start when nothing is persisted at the handle', async () => {
    const proc = spawnSidecar(sidecarArgs({ '--tpm-key-handle': '0x81010099' }));
    const info = await proc.exited;
    expect(info.code).toBe(3);
    expect(proc.lines.find((l) => l.json?.['level'] === 'fatal')?.json?.['reason']).toBe('tpm_key_missing');
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

  it('answers 403 "gateway denied request" for a destination without a grant', async () => {
    const other = await freePort();
    const r = await curlConnectStatus(`https://localhost:${other}/`);
    expect(r.code).toBe(56);
    expect(r.stdout).toBe('403');
    const raw = await rawConnect(sidecarPort, `localhost:${other}`);
    expect(raw).toMatchObject({ status: 403, body: 'gateway denied request' });
    expect((await gw.waitForLogs('CONNECT denied')).at(-1)?.['source_identity']).toBe(IDENTITY);
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

  it('warns when listening on a non-loopback address it was allowed', async () => {
    const port = await freePort();
    const proc = spawnSidecar(sidecarArgs({ '--listen': `0.0.0.0:${port}`, '--allow-non-loopback': '' }));
    const warn = await proc.waitForLog((l) => l.json?.['level'] === 'warn', 30_000);
    expect(String(warn.json?.['msg'])).toContain('non-loopback');
    await proc.waitForLog((l) => l.json?.['msg'] === 'sidecar listening', 30_000);
    expect(await proc.stop()).toBe(0);
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
