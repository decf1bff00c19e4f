/**
 * `npm run bench:idle-rss`: resident memory of an idle sidecar and an idle gateway, as an agent host or a
 * gateway host would see it (bench/README.md, "Idle memory").
 *
 * One throwaway PostgreSQL registry, one software TPM (swtpm + tpm2-abrmd) with a key provisioned by
 * `agent_gateway_sidecar provision` and granted one loopback echo destination; then, per repetition:
 *   - a bare `node` with node:http2 and node:tls loaded (the floor any Node proxy starts from),
 *   - the gateway with `workers = 1`,
 *   - the sidecar connected to it, read once after start-up, once after one tunnel has carried bytes
 *     and closed (the sidecar's gateway connection is open from then on), and once after
 *     `--traffic-tunnels` more tunnels of 1 MiB each way, 4 at a time (an agent that has used it: the
 *     V8 heap and malloc keep what that traffic grew them to, since nothing collects while idle),
 *   - `--sidecars` more sidecars idle next to it (same key, each after one tunnel), each read on its
 *     own: what one more agent costs a host that already runs others (USS; the file pages are shared),
 *   - the gateway with the default `workers` (one per CPU), primary and workers summed.
 * Each reading is taken `--settle-ms` after the process went idle, from /proc/<pid>/status (VmRSS,
 * VmHWM, RssAnon, RssFile) and /proc/<pid>/smaps_rollup (Pss, USS). Only 127.0.0.1 is dialled.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { migrate } from '../core/migrate.js';
import { createPrincipalKey } from '../dev-support/pki.js';
import { freePort, waitForPort } from '../dev-support/ports.js';
import { grant } from '../dev-support/registry-seed.js';
import { missingTpmTools, startSwtpm, TABRMD_TCTI, type TpmHandle } from '../dev-support/swtpm.js';
import { createPki } from './support/pki.js';
import { startBenchPostgres } from './support/postgres.js';
import { type MemoryReading, memoryOf, processTree } from './support/proc.js';
import { interpreterFlags, type Managed, spawnLogged } from './support/spawn.js';
import { show, spread, table } from './support/stats.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');
const GATEWAY_MAIN = path.join(repoRoot, 'dist', 'gateway', 'main.js');
const SIDECAR_MAIN = path.join(repoRoot, 'dist', 'sidecar', 'main.js');
const DESTINATION = 'echo.bench.internal:443';
const IDENTITY = 'bench-idle-agent';
const MiB = 1024 * 1024;

type Options = {
  reps: number;
  sidecars: number;
  trafficTunnels: number;
  settleMs: number;
  /** undefined = the `#!` line's flags; otherwise these instead. */
  sidecarNodeFlags: string[] | undefined;
  gatewayNodeFlags: string[] | undefined;
  keep: boolean;
};

function options(): Options {
  const { values } = parseArgs({
    options: {
      reps: { type: 'string' },
      sidecars: { type: 'string' },
      'traffic-tunnels': { type: 'string' },
      'settle-ms': { type: 'string' },
      'sidecar-node-flags': { type: 'string' },
      'gateway-node-flags': { type: 'string' },
      keep: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: npm run bench:idle-rss -- [--reps N] [--sidecars N] [--traffic-tunnels N] [--settle-ms N]\n' +
        '  [--sidecar-node-flags "..."] [--gateway-node-flags "..."]   (instead of the #! line flags; "" = none)\n' +
        '  [--keep]\n',
    );
    process.exit(0);
  }
  const num = (text: string | undefined, dflt: number, min: number, flag: string) => {
    const n = text === undefined ? dflt : Number(text);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${flag} must be a whole number >= ${min}`);
    return n;
  };
  const flags = (text: string | undefined) => text?.split(' ').filter(Boolean);
  return {
    reps: num(values.reps, 3, 1, 'reps'),
    sidecars: num(values.sidecars, 4, 1, 'sidecars'),
    trafficTunnels: num(values['traffic-tunnels'], 200, 0, 'traffic-tunnels'),
    settleMs: num(values['settle-ms'], 15_000, 0, 'settle-ms'),
    sidecarNodeFlags: flags(values['sidecar-node-flags']),
    gatewayNodeFlags: flags(values['gateway-node-flags']),
    keep: values.keep === true,
  };
}

function progress(text: string): void {
  process.stderr.write(`[idle-rss] ${text}\n`);
}

/** Summed over a process tree (a gateway with workers is a primary and its children). */
function treeMemory(pid: number): MemoryReading {
  const sum = { rss: 0, hwm: 0, anon: 0, file: 0, pss: 0, uss: 0 };
  for (const p of processTree(pid)) {
    const m = memoryOf(p);
    if (m === undefined) continue;
    sum.rss += m.rss;
    sum.hwm += m.hwm;
    sum.anon += m.anon;
    sum.file += m.file;
    sum.pss += m.pss;
    sum.uss += m.uss;
  }
  return sum;
}

async function started(proc: Managed, port: number): Promise<void> {
  try {
    await waitForPort(port, 60_000, () => proc.alive());
  } catch (err) {
    throw new Error(`${proc.name} did not come up: ${(err as Error).message}\n${proc.tail()}`);
  }
}

/** A loopback TCP echo server: the tunnel's destination. */
async function startEcho(): Promise<{ port: number; close(): void }> {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  const port = await new Promise<number>((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)),
  );
  return { port, close: () => server.close() };
}

/** CONNECT through the sidecar, echo `bytes`, close: one tunnel end to end. */
function oneTunnel(sidecarPort: number, bytes = 64 * 1024): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: sidecarPort });
    const payload = Buffer.alloc(bytes, 0x61);
    let head = '';
    let echoed = 0;
    let open = false;
    socket.setTimeout(30_000, () => socket.destroy(new Error('tunnel timed out')));
    socket.on('error', reject);
    socket.on('close', () => (echoed >= payload.length ? resolve() : reject(new Error(`tunnel: ${head}`))));
    socket.on('data', (d: Buffer) => {
      if (open) {
        echoed += d.length;
        if (echoed >= payload.length) socket.end();
        return;
      }
      head += d.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) return;
      if (!/^HTTP\/1\.1 200/.test(head)) {
        socket.destroy(new Error(`CONNECT answered: ${head.split('\r\n')[0]}`));
        return;
      }
      open = true;
      socket.write(payload);
    });
    socket.write(`CONNECT ${DESTINATION} HTTP/1.1\r\nHost: ${DESTINATION}\r\n\r\n`);
  });
}

function gatewayToml(p: {
  workers: number | undefined;
  port: number;
  adminPort: number;
  certPath: string;
  keyPath: string;
  databaseUrl: string;
  echoPort: number;
}): string {
  return [
    '# Written by bench/idle-rss.ts: the defaults, plus what a loopback destination needs.',
    '[server]',
    `listen_addr = "127.0.0.1:${p.port}"`,
    `tls_cert_path = "${p.certPath}"`,
    `tls_key_path = "${p.keyPath}"`,
    ...(p.workers === undefined ? [] : [`workers = ${p.workers}`]),
    'drain_timeout_ms = 1000',
    '',
    '[upstream]',
    'allow_cidrs = ["127.0.0.0/8"]',
    `overrides = { "${DESTINATION}" = "127.0.0.1:${p.echoPort}" }`,
    '',
    '[admin]',
    `listen_addr = "127.0.0.1:${p.adminPort}"`,
    '',
    '[observability]',
    'log_level = "info"',
    '',
    '[policy]',
    `database_url = "${p.databaseUrl}"`,
    '',
  ].join('\n');
}

type Row =
  | 'bare'
  | 'gateway1'
  | 'sidecarStarted'
  | 'sidecarIdle'
  | 'sidecarUsed'
  | 'sidecarOfN'
  | 'gatewayDefault';
const rowLabels = (o: Options): Record<Row, string> => ({
  bare: 'bare node + http2/tls',
  gateway1: 'gateway, workers = 1',
  sidecarStarted: 'sidecar, after start-up',
  sidecarIdle: 'sidecar, idle after one tunnel',
  sidecarUsed: `sidecar, idle after ${o.trafficTunnels} × 1 MiB tunnels`,
  sidecarOfN: `sidecar, each of ${o.sidecars} more, idle after one tunnel`,
  gatewayDefault: `gateway, workers = default (${os.availableParallelism()})`,
});

async function main(): Promise<void> {
  const o = options();
  for (const f of [GATEWAY_MAIN, SIDECAR_MAIN])
    if (!existsSync(f)) throw new Error(`${f} missing: run npm run build`);
  const missing = missingTpmTools();
  if (missing !== undefined) throw new Error(`no software TPM: ${missing}`);
  const sidecarFlags = o.sidecarNodeFlags ?? interpreterFlags(SIDECAR_MAIN);
  const gatewayFlags = o.gatewayNodeFlags ?? interpreterFlags(GATEWAY_MAIN);
  progress(`node ${process.version}; sidecar flags [${sidecarFlags}], gateway flags [${gatewayFlags}]`);
  const work = await mkdtemp(path.join(os.tmpdir(), 'agw-idle-rss-'));
  const cleanups: (() => Promise<void> | void)[] = [];
  const readings: Record<Row, MemoryReading[]> = {
    bare: [],
    gateway1: [],
    sidecarStarted: [],
    sidecarIdle: [],
    sidecarUsed: [],
    sidecarOfN: [],
    gatewayDefault: [],
  };
  const file = (name: string, text: string) => {
    const p = path.join(work, name);
    writeFileSync(p, text);
    chmodSync(p, 0o600);
    return p;
  };
  try {
    const pki = await createPki();
    const caPath = file('ca.pem', pki.caPem);
    const certPath = file('server.pem', pki.server.certPem);
    const keyPath = file('server.key', pki.server.keyPem);
    const echo = await startEcho();
    cleanups.push(() => echo.close());
    progress('starting PostgreSQL and the software TPM');
    const pg = await startBenchPostgres((url) => migrate(url));
    cleanups.push(() => pg.stop());
    const tpm: TpmHandle = await startSwtpm();
    cleanups.push(() => tpm.stop());
    const env = { ...process.env, ...tpm.env };
    const pin = file('user.pin', 'bench-user-pin-1234');
    const soPin = file('so.pin', 'bench-so-pin-5678');
    const carrierPath = path.join(work, 'carrier.pem');
    const spkiPath = path.join(work, 'key.spki.der');
    const tpmFlags = [
      ...['--tpm-tcti', TABRMD_TCTI, '--tpm-key-handle', '0x81010004'],
      ...['--pkcs11-store', tpm.env.TPM2_PKCS11_STORE, '--pkcs11-token', 'agw-idle', '--pin-file', pin],
    ];
    execFileSync(
      process.execPath,
      [SIDECAR_MAIN, 'provision', ...tpmFlags, '--so-pin-file', soPin, '--identity', IDENTITY].concat([
        '--out-cert',
        carrierPath,
        '--out-spki',
        spkiPath,
      ]),
      { env, stdio: ['ignore', 'ignore', 'inherit'], timeout: 120_000 },
    );
    await grant(pg.databaseUrl, {
      principalId: 'bench-principal',
      principal: createPrincipalKey(),
      identity: IDENTITY,
      subjectSpkiDer: readFileSync(spkiPath),
      destination: DESTINATION,
    });

    const spawnGateway = async (name: string, workers: number | undefined) => {
      const port = await freePort();
      const config = file(
        `${name}.toml`,
        gatewayToml({
          workers,
          port,
          adminPort: await freePort(),
          certPath,
          keyPath,
          databaseUrl: pg.databaseUrl,
          echoPort: echo.port,
        }),
      );
      const proc = spawnLogged(
        name,
        process.execPath,
        [...gatewayFlags, GATEWAY_MAIN, '--config', config],
        path.join(work, `${name}.log`),
      );
      cleanups.push(() => proc.stop());
      await started(proc, port);
      const expected =
        (workers ?? os.availableParallelism()) > 1 ? (workers ?? os.availableParallelism()) + 1 : 1;
      const until = Date.now() + 60_000;
      while (processTree(proc.pid).length < expected && Date.now() < until) await sleep(100);
      return { proc, port };
    };
    const settled = async (proc: Managed): Promise<MemoryReading> => {
      await sleep(o.settleMs);
      if (!proc.alive()) throw new Error(`${proc.name} exited:\n${proc.tail()}`);
      return treeMemory(proc.pid);
    };

    for (let rep = 1; rep <= o.reps; rep++) {
      progress(`repetition ${rep}/${o.reps}`);
      const bare = spawnLogged(
        'bare-node',
        process.execPath,
        ['-e', "require('node:http2'); require('node:tls'); setInterval(() => {}, 1 << 30);"],
        path.join(work, 'bare.log'),
      );
      readings.bare.push(await settled(bare));
      await bare.stop();

      const gw = await spawnGateway(`gateway-1-${rep}`, 1);
      const sidecars: { proc: Managed; port: number }[] = [];
      const spawnSidecar = async () => {
        const port = await freePort();
        const proc = spawnLogged(
          'sidecar',
          process.execPath,
          [...sidecarFlags, SIDECAR_MAIN, ...tpmFlags]
            .concat(['--listen', `127.0.0.1:${port}`, '--gateway', `127.0.0.1:${gw.port}`])
            .concat(['--gateway-name', 'localhost', '--client-cert', carrierPath, '--ca-cert', caPath]),
          path.join(work, `sidecar-${rep}-${sidecars.length}.log`),
          env,
        );
        cleanups.push(() => proc.stop());
        sidecars.push({ proc, port });
        await started(proc, port);
        return { proc, port };
      };
      const first = await spawnSidecar();
      readings.sidecarStarted.push(await settled(first.proc));
      await oneTunnel(first.port);
      readings.sidecarIdle.push(await settled(first.proc));
      readings.gateway1.push(treeMemory(gw.proc.pid));
      let next = 0;
      const worker = async () => {
        while (next++ < o.trafficTunnels) await oneTunnel(first.port, 1024 * 1024);
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      readings.sidecarUsed.push(await settled(first.proc));
      while (sidecars.length <= o.sidecars) await oneTunnel((await spawnSidecar()).port);
      await sleep(o.settleMs);
      for (const sc of sidecars.slice(1)) readings.sidecarOfN.push(treeMemory(sc.proc.pid));
      for (const sc of sidecars) await sc.proc.stop();
      await gw.proc.stop();

      const gwDefault = await spawnGateway(`gateway-default-${rep}`, undefined);
      readings.gatewayDefault.push(await settled(gwDefault.proc));
      await gwDefault.proc.stop();
    }

    const mib = (xs: number[]) => show(spread(xs.map((x) => x / MiB)), 1);
    const labels = rowLabels(o);
    const rows = (Object.keys(labels) as Row[]).map((row) => {
      const r = readings[row];
      return [
        labels[row],
        mib(r.map((m) => m.rss)),
        mib(r.map((m) => m.hwm)),
        mib(r.map((m) => m.anon)),
        mib(r.map((m) => m.file)),
        mib(r.map((m) => m.pss)),
        mib(r.map((m) => m.uss)),
      ];
    });
    process.stdout.write(
      `\nIdle memory, MiB, median (min–max) of ${o.reps}; node ${process.version}; settle ${o.settleMs} ms; ` +
        `sidecar flags [${sidecarFlags.join(' ')}], gateway flags [${gatewayFlags.join(' ')}]\n\n` +
        `${table(['process', 'VmRSS', 'VmHWM', 'RssAnon', 'RssFile', 'Pss', 'USS'], rows)}\n`,
    );
  } finally {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        process.stderr.write(`cleanup: ${(err as Error).message}\n`);
      }
    }
    if (o.keep) progress(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `idle-rss failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
