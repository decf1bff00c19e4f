/**
 * `npm run bench`: every line measured side by side in ONE run with ONE load client (see bench/README.md).
 *
 *   (a) direct TLS 1.3 to the sink (the physical line)
 *   (b) naive-proxy.ts, a minimal tuned Node HTTP/2 CONNECT proxy (the naive-Node baseline)
 *   (c) the gateway (dist/gateway/main.js) with a real PostgreSQL registry and a signed grant
 *   (d) sidecar (TPM key in swtpm) + gateway
 *
 * The sink, each proxy and the load client are separate processes; proxy CPU comes from /proc/<pid>/stat of
 * the proxy process tree, memory from /proc/<pid>/status and /proc/<pid>/fd.
 */
import { type ChildProcess, execFileSync, fork } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { migrate } from '../core/migrate.js';
import { createPrincipalKey as principalKey } from '../dev-support/pki.js';
import { freePort, waitForPort } from '../dev-support/ports.js';
import { grant as seedGrant } from '../dev-support/registry-seed.js';
import {
  type TpmHandle as BenchTpm,
  missingTpmTools,
  startSwtpm as startBenchTpm,
  TABRMD_TCTI,
} from '../dev-support/swtpm.js';
import { type IdleReadings, issue19Report } from './issue19.js';
import type { Direction, Op, OpResult, Response, Target } from './protocol.js';
import {
  RECEIPTS_LINES,
  type ReceiptsLineId,
  type ReceiptsRow,
  receiptFiles,
  receiptsReport,
  receiptsToml,
  type SigningCost,
  signingCost,
} from './receipts.js';
import { collectGarbage } from './support/inspector-gc.js';
import { createPki, SINK_NAME } from './support/pki.js';
import { startBenchPostgres } from './support/postgres.js';
import {
  cpuSeconds,
  fdCount,
  machineBusySeconds,
  machineDescription,
  processTree,
  rssBytes,
} from './support/proc.js';
import { interpreterFlags, type Managed, spawnLogged } from './support/spawn.js';
import { ratio, type Spread, show, spread, table } from './support/stats.js';
import {
  COUNTED,
  countSyscalls,
  type SyscallCounter,
  syscallCountingUnavailable,
} from './support/syscalls.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/bench/run.js -> the repository root. */
const repoRoot = path.resolve(here, '..', '..');
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const DESTINATION = `${SINK_NAME}:443`;
const IDENTITY = 'bench-agent';
const TPM_IDENTITY = 'bench-agent-tpm';

// ---------- options ----------

type Options = {
  quick: boolean;
  reps: number;
  singleBytes: number;
  concTunnels: number;
  concBytes: number;
  concConnections: number;
  latencyCount: number;
  newconnCount: number;
  idleTunnels: number;
  idleCycles: number;
  idlePerConnection: number;
  settleMs: number;
  verifyBytes: number;
  lines: LineId[];
  figures: Set<string>;
  dirs: Direction[];
  extraProxy: string | undefined;
  extraProxyNodeArgs: string[];
  syscalls: boolean;
  /** Debug mode: a full GC (inspector) in the gateway before each idle-figure RSS reading after a close. */
  idleGc: boolean;
  work: string;
  gatewayWorkers: number;
  /** Worker counts of the scaling figure. */
  scaleWorkers: number[];
  /** HTTP/2 connections the scaling figure spreads its tunnels over (cluster hands each to one worker). */
  scaleConnections: number;
  gatewayLogLevel: string;
  gatewayDecisionCache: boolean;
  gatewayNodeArgs: string[];
  sidecarNodeArgs: string[];
  opTimeoutMs: number;
  maxMinutes: number;
  out: string;
  keep: boolean;
};

const FIGURES = ['single', 'conc', 'latency', 'newconn', 'idle', 'issue19', 'scale', 'receipts', 'fleet'];

function options(): Options {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean' },
      reps: { type: 'string' },
      'single-mib': { type: 'string' },
      'conc-tunnels': { type: 'string' },
      'conc-mib': { type: 'string' },
      'conc-connections': { type: 'string' },
      'latency-count': { type: 'string' },
      'newconn-count': { type: 'string' },
      'idle-tunnels': { type: 'string' },
      'idle-cycles': { type: 'string' },
      'idle-per-connection': { type: 'string' },
      'settle-ms': { type: 'string' },
      'verify-mib': { type: 'string' },
      lines: { type: 'string' },
      figures: { type: 'string' },
      dirs: { type: 'string' },
      'extra-proxy': { type: 'string' },
      'extra-proxy-node-args': { type: 'string' },
      syscalls: { type: 'boolean' },
      'idle-gc': { type: 'boolean' },
      'gateway-workers': { type: 'string' },
      'scale-workers': { type: 'string' },
      'scale-connections': { type: 'string' },
      'gateway-log-level': { type: 'string' },
      'gateway-decision-cache': { type: 'string' },
      'gateway-node-args': { type: 'string' },
      'sidecar-node-args': { type: 'string' },
      'op-timeout-s': { type: 'string' },
      'max-minutes': { type: 'string' },
      out: { type: 'string' },
      keep: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: npm run bench -- [--quick] [--reps N] [--single-mib N] [--conc-tunnels N] [--conc-mib N]\n' +
        '  [--conc-connections N] [--latency-count N] [--newconn-count N] [--idle-tunnels N] [--idle-cycles N]\n' +
        '  [--idle-per-connection N] [--settle-ms N] [--verify-mib N] [--lines a,b,c,d]\n' +
        '  [--figures single,conc,latency,newconn,idle,issue19,scale,receipts,fleet] [--dirs up,down] [--gateway-workers N] [--gateway-log-level L]\n' +
        '  [--scale-workers 1,2,...] [--scale-connections N]\n' +
        '  [--gateway-decision-cache on|off] [--gateway-node-args "..."] [--sidecar-node-args "..."]\n' +
        '  [--op-timeout-s N] [--max-minutes N]\n' +
        '  [--extra-proxy FILE (line x: a proxy script taking --port --cert --key)] [--extra-proxy-node-args "..."]\n' +
        '  [--syscalls] [--idle-gc (line c: full GC through the inspector before the idle RSS readings)]\n' +
        '  [--out FILE] [--keep]\n' +
        'Every flag also reads BENCH_<NAME> (e.g. BENCH_REPS=7, BENCH_QUICK=1). See bench/README.md.\n',
    );
    process.exit(0);
  }
  const env = (flag: string) => process.env[`BENCH_${flag.toUpperCase().replace(/-/g, '_')}`];
  const str = (flag: keyof typeof values) => {
    const v = values[flag];
    return typeof v === 'string' ? v : env(flag);
  };
  const quick = values.quick === true || ['1', 'true', 'yes'].includes(env('quick') ?? '');
  const num = (flag: keyof typeof values, full: number, fast: number, min = 1) => {
    const text = str(flag);
    const n = text === undefined ? (quick ? fast : full) : Number(text);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${flag} must be a number >= ${min}, got ${text}`);
    return n;
  };
  const lines = (str('lines') ?? 'a,b,c,d').split(',').map((x) => x.trim()) as LineId[];
  const extraProxy = str('extra-proxy');
  if (extraProxy !== undefined && !lines.includes('x')) lines.push('x');
  if (lines.includes('x') && extraProxy === undefined) throw new Error('line x needs --extra-proxy FILE');
  for (const l of lines)
    if (!['a', 'b', 'c', 'd', 'x'].includes(l)) throw new Error(`--lines: unknown line ${l}`);
  if (!lines.includes('a')) lines.unshift('a'); // (a) is the yardstick of every ratio
  const figures = new Set((str('figures') ?? FIGURES.join(',')).split(',').map((x) => x.trim()));
  for (const f of figures) if (!FIGURES.includes(f)) throw new Error(`--figures: unknown figure ${f}`);
  const dirs = (str('dirs') ?? 'up,down').split(',').map((x) => x.trim()) as Direction[];
  for (const d of dirs) if (d !== 'up' && d !== 'down') throw new Error(`--dirs: unknown direction ${d}`);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  return {
    quick,
    reps: num('reps', 5, 2),
    singleBytes: Math.round(num('single-mib', 256, 32) * MiB),
    concTunnels: num('conc-tunnels', 100, 100),
    concBytes: Math.round(num('conc-mib', 256, 32) * MiB),
    // Issue #19's figure: 100 tunnels on 10 connections (1 = the sidecar's shape, `--conc-connections 1`).
    concConnections: num('conc-connections', 10, 10),
    latencyCount: num('latency-count', 2000, 300),
    newconnCount: num('newconn-count', 200, 30),
    idleTunnels: num('idle-tunnels', 1000, 200),
    idleCycles: num('idle-cycles', 5, 2),
    idlePerConnection: num('idle-per-connection', 250, 250),
    settleMs: num('settle-ms', 2000, 500, 0),
    verifyBytes: Math.round(num('verify-mib', 16, 4) * MiB),
    lines,
    figures,
    dirs,
    syscalls: values.syscalls === true || env('syscalls') === '1',
    idleGc: values['idle-gc'] === true || env('idle-gc') === '1',
    work: '',
    extraProxyNodeArgs: (str('extra-proxy-node-args') ?? '').split(' ').filter(Boolean),
    extraProxy: extraProxy === undefined ? undefined : path.resolve(extraProxy),
    gatewayWorkers: num('gateway-workers', 1, 1),
    scaleWorkers: scaleWorkers(str('scale-workers')),
    scaleConnections: num('scale-connections', 8, 8),
    gatewayLogLevel: str('gateway-log-level') ?? 'info',
    gatewayDecisionCache: (str('gateway-decision-cache') ?? 'on') !== 'off',
    gatewayNodeArgs: (str('gateway-node-args') ?? '').split(' ').filter(Boolean),
    sidecarNodeArgs: (str('sidecar-node-args') ?? '').split(' ').filter(Boolean),
    opTimeoutMs: num('op-timeout-s', 300, 120) * 1000,
    maxMinutes: num('max-minutes', 90, 5),
    out: str('out') ?? path.join(repoRoot, 'bench', 'results', `${stamp}.json`),
    keep: values.keep === true || env('keep') === '1',
  };
}

/** Default: 1, 2, then doubling up to the CPU count (at most 8); always 1 and 2 so there is a comparison. */
function scaleWorkers(text: string | undefined): number[] {
  if (text !== undefined) {
    const list = text.split(',').map((x) => Number(x.trim()));
    for (const n of list)
      if (!Number.isInteger(n) || n < 1)
        throw new Error(`--scale-workers: ${JSON.stringify(text)} is not a list of counts`);
    return list;
  }
  const list = [1, 2];
  for (let n = 4; n <= Math.min(os.availableParallelism(), 8); n *= 2) list.push(n);
  return list;
}

// ---------- lines ----------

type LineId = 'a' | 'b' | 'c' | 'd' | 'x';
/** Issue #19's extra gateways: decision cache off, default workers. */
type Issue19LineId = 'c-miss' | 'c-shipped';
/** The scaling figure's gateways: line (c) with `workers = N`. */
type ScaleLineId = `c${number}w`;
const LABELS: Record<LineId, string> = {
  a: '(a) direct TLS',
  b: '(b) naive Node proxy',
  c: '(c) gateway',
  d: '(d) sidecar + gateway',
  x: '(x) experimental proxy',
};

type Component = { readonly name: string; pids(): number[] };
/** Start a gateway on fresh ports against the bench registry (workers 0 = its default); own config and log. */
type SpawnGateway = (
  workers: number,
  name: string,
  extraToml?: string,
  decisionCache?: boolean,
) => Promise<{ proc: Managed; port: number; config: string }>;

type IdleCycle = {
  openSeconds: number;
  closeSeconds: number;
  openRssBytes: number;
  openFds: number;
  closedRssBytes: number;
  closedFds: number;
  perTunnelBytes: number;
};

type Line = {
  readonly id: LineId | ScaleLineId | ReceiptsLineId | Issue19LineId;
  readonly label: string;
  target: Target | undefined;
  components: Component[];
  notMeasured: string | undefined;
  samples: Record<string, number[]>;
  errors: string[];
  /** The inspector port of line (c)'s gateway with --idle-gc. */
  inspectPort: number | undefined;
  idle:
    | {
        tunnels: number;
        processes: number;
        baselineRssBytes: number;
        baselineFds: number;
        cycles: IdleCycle[];
      }
    | undefined;
};

function newLine(
  id: LineId | ScaleLineId | ReceiptsLineId | Issue19LineId,
  label = LABELS[id as LineId],
): Line {
  return {
    id,
    label,
    target: undefined,
    components: [],
    notMeasured: undefined,
    samples: {},
    errors: [],
    inspectPort: undefined,
    idle: undefined,
  };
}

function record(line: Line, name: string, value: number): void {
  const list = line.samples[name];
  if (list === undefined) line.samples[name] = [value];
  else list.push(value);
}

const proxyPids = (line: Line) => line.components.flatMap((c) => c.pids());

// ---------- load client ----------

class LoadClient {
  private readonly child: ChildProcess;
  private next = 1;
  private readonly pending = new Map<number, (r: OpResult) => void>();

  constructor(
    logFile: string,
    private readonly timeoutMs: number,
  ) {
    const fd = openSync(logFile, 'a');
    this.child = fork(path.join(here, 'load-client.js'), [], {
      stdio: ['ignore', fd, fd, 'ipc'],
      serialization: 'advanced',
    });
    closeSync(fd);
    this.child.on('message', (msg: Response) => {
      this.pending.get(msg.id)?.(msg.result);
      this.pending.delete(msg.id);
    });
    this.child.on('exit', (code) => {
      for (const resolve of this.pending.values())
        resolve({ ok: false, error: `load client exited (${code})` });
      this.pending.clear();
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  call(op: Op): Promise<OpResult> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`load client: ${op.op} did not answer within ${this.timeoutMs + 15_000} ms`));
      }, this.timeoutMs + 15_000);
      this.pending.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      this.child.send({ id, ...op });
    });
  }

  async must(op: Op): Promise<OpResult & { ok: true }> {
    const r = await this.call(op);
    if (!r.ok) throw new Error(r.error);
    return r;
  }

  stop(): void {
    this.child.disconnect();
    setTimeout(() => this.child.kill('SIGKILL'), 3000).unref();
  }
}

// ---------- process under test helpers ----------

function nodeScript(
  name: string,
  script: string,
  args: string[],
  logFile: string,
  env?: NodeJS.ProcessEnv,
  nodeArgs: string[] = [],
): Managed {
  return spawnLogged(name, process.execPath, [...nodeArgs, script, ...args], logFile, env);
}

async function started(proc: Managed, port: number, timeoutMs = 30_000): Promise<void> {
  try {
    await waitForPort(port, timeoutMs, () => proc.alive());
  } catch (err) {
    throw new Error(
      `${proc.name} did not come up: ${(err as Error).message}\n--- ${proc.logFile} ---\n${proc.tail()}`,
    );
  }
}

function gatewayToml(
  o: Options,
  p: {
    /** 0: the gateway's default (one per CPU). */
    workers: number;
    port: number;
    adminPort: number;
    certPath: string;
    keyPath: string;
    databaseUrl: string;
    sinkPort: number;
    decisionCache: boolean;
  },
): string {
  return [
    '# Written by bench/run.ts. Only what the bench needs differs from the defaults; see bench/README.md.',
    '[server]',
    `listen_addr = "127.0.0.1:${p.port}"`,
    `tls_cert_path = "${p.certPath}"`,
    `tls_key_path = "${p.keyPath}"`,
    ...(p.workers === 0 ? [] : [`workers = ${p.workers}`]),
    'drain_timeout_ms = 1000',
    '',
    '[http2]',
    '# the sidecar line keeps 1,000 idle tunnels on its one connection',
    `max_concurrent_streams = ${Math.max(1000, o.idleTunnels + 200)}`,
    '',
    '[limits]',
    '# the bench opens thousands of tunnels per second for one identity: rate limits off, tunnel caps raised',
    'connect_rate_per_identity = 0',
    `max_tunnels_per_identity = ${Math.max(1000, o.idleTunnels * 2 + o.concTunnels + 100)}`,
    `max_tunnels = ${Math.max(20_000, o.idleTunnels * 4)}`,
    '',
    '[upstream]',
    '# the sink is a loopback listener, which the default deny list refuses',
    'allow_cidrs = ["127.0.0.0/8"]',
    `overrides = { "${DESTINATION}" = "127.0.0.1:${p.sinkPort}" }`,
    '',
    '[admin]',
    `listen_addr = "127.0.0.1:${p.adminPort}"`,
    '',
    '[observability]',
    `log_level = "${o.gatewayLogLevel}"`,
    '',
    '[policy]',
    `database_url = "${p.databaseUrl}"`,
    `decision_cache_max_entries = ${p.decisionCache ? 10_000 : 0}`,
    '# the idle figure opens 250 CONNECTs at once per connection; when the decision cache is dropped',
    '# (every registry change, every full re-check) they all become lookups at once: let them queue',
    'max_lookups_in_flight = 5000',
    'pool_acquire_timeout_ms = 30000',
    '',
  ].join('\n');
}

// ---------- measurements ----------

function cpuOf(line: Line): number[] {
  return line.components.map((c) => cpuSeconds(c.pids()));
}

async function transferFigure(
  o: Options,
  client: LoadClient,
  line: Line,
  sinkPids: () => number[],
  kind: 'single' | 'conc',
  dir: Direction,
  connections = kind === 'single' ? 1 : o.concConnections,
): Promise<void> {
  const target = line.target as Target;
  const tunnels = kind === 'single' ? 1 : o.concTunnels;
  const bytes = kind === 'single' ? o.singleBytes : Math.floor(o.concBytes / o.concTunnels);
  await client.must({ op: 'transfer-open', line: line.id, target, tunnels, connections });
  let counter: SyscallCounter | undefined;
  try {
    if (o.syscalls && line.components.length > 0) {
      counter = await countSyscalls(proxyPids(line), path.join(o.work, `perf-${line.id}.txt`));
    }
    const p0 = cpuOf(line);
    const c0 = cpuSeconds([client.pid]);
    const s0 = cpuSeconds(sinkPids());
    const m0 = machineBusySeconds();
    const w0 = process.hrtime.bigint();
    const r = await client.must({ op: 'transfer-run', dir, bytes });
    const wall = Number(process.hrtime.bigint() - w0) / 1e9;
    const p1 = cpuOf(line);
    const m1 = machineBusySeconds();
    const moved = r.bytes ?? 0;
    if (counter !== undefined) {
      const counts = await counter.stop();
      counter = undefined;
      for (const name of COUNTED)
        record(line, `${kind}.${dir}.syscallsPerMiB.${name}`, (counts[name] ?? 0) / (moved / MiB));
    }
    const seconds = r.seconds ?? Number.NaN;
    const gib = moved / GiB;
    const key = `${kind}.${dir}`;
    record(line, `${key}.MBps`, moved / seconds / 1e6);
    if (line.components.length > 0) {
      const perComponent = p1.map((v, i) => v - (p0[i] ?? 0));
      record(line, `${key}.proxyCpuPerGiB`, perComponent.reduce((a, b) => a + b, 0) / gib);
      for (const [i, c] of line.components.entries()) {
        record(line, `${key}.cpuPerGiB.${c.name}`, (perComponent[i] ?? 0) / gib);
      }
    }
    const clientCpu = cpuSeconds([client.pid]) - c0;
    record(line, `${key}.clientCpuPerGiB`, clientCpu / gib);
    record(line, `${key}.clientUtil`, clientCpu / wall);
    const sinkCpu = cpuSeconds(sinkPids()) - s0;
    record(line, `${key}.sinkCpuPerGiB`, sinkCpu / gib);
    // Everything else the machine did meanwhile (other users' processes, the kernel's softirq work is
    // charged to whoever it interrupts): in cores. Bench numbers are only comparable when this is ~0.
    const ours = p1.reduce((x, y) => x + y, 0) - p0.reduce((x, y) => x + y, 0) + clientCpu + sinkCpu;
    record(line, `${key}.foreignCores`, Math.max(0, m1 - m0 - ours) / wall);
    progress(
      `${line.label} ${kind} ${dir}: ${(moved / seconds / 1e6).toFixed(0)} MB/s` +
        ` (other load ${(Math.max(0, m1 - m0 - ours) / wall).toFixed(2)} cores)`,
    );
  } finally {
    await counter?.stop();
    await client.must({ op: 'transfer-close' });
  }
}

/**
 * Item 3 of issue #9: the 100-tunnel transfer against a gateway with `workers = N`, the tunnels spread over
 * --scale-connections HTTP/2 connections so that node:cluster hands connections to every worker. Each worker
 * count gets a fresh gateway (same registry, config otherwise identical), stopped afterwards.
 */
async function scaleFigure(
  o: Options,
  client: LoadClient,
  line: Line,
  sinkPids: () => number[],
  workers: number,
  spawn: (workers: number, name: string) => Promise<{ proc: Managed; port: number }>,
  carrier: { certPem: string; keyPem: string },
): Promise<void> {
  progress(`${line.label}: starting`);
  const { proc, port } = await spawn(workers, `gateway-${workers}w`);
  try {
    line.target = {
      kind: 'h2',
      port,
      authority: DESTINATION,
      certPem: carrier.certPem,
      keyPem: carrier.keyPem,
    };
    line.components = [{ name: 'gateway', pids: () => processTree(proc.pid) }];
    const verified = await client.call({
      op: 'verify',
      line: line.id,
      target: line.target,
      bytes: o.verifyBytes,
    });
    if (!verified.ok) throw new Error(`verification failed: ${verified.error}`);
    for (let rep = 1; rep <= o.reps; rep++) {
      for (const dir of o.dirs) {
        await transferFigure(o, client, line, sinkPids, 'conc', dir, o.scaleConnections);
      }
    }
  } finally {
    await client.call({ op: 'reset', line: line.id });
    await proc.stop();
  }
}

/**
 * Issue #17 (bench/receipts.ts): line (c) once per [receipts] setting, one gateway at a time, each
 * measured for CPU per CONNECT (sequential CONNECT -> 200 -> close, then 1.5 s for the writer's flush and
 * checkpoint) and, through transferFigure, CPU per GiB on one tunnel.
 */
async function receiptsFigure(
  o: Options,
  client: LoadClient,
  sinkPids: () => number[],
  spawn: (workers: number, name: string, extraToml?: string) => Promise<{ proc: Managed; port: number }>,
  carrier: { certPem: string; keyPem: string },
): Promise<{ rows: ReceiptsRow[]; lines: Line[] }> {
  const rows: ReceiptsRow[] = [];
  const lines: Line[] = [];
  for (const { id, label } of RECEIPTS_LINES) {
    const line = newLine(id, label);
    lines.push(line);
    const { toml, dir } = receiptsToml(id, o.work);
    progress(`${label}: starting`);
    try {
      const { proc, port } = await spawn(o.gatewayWorkers, `gateway-${id}`, toml);
      try {
        line.target = {
          kind: 'h2',
          port,
          authority: DESTINATION,
          certPem: carrier.certPem,
          keyPem: carrier.keyPem,
        };
        line.components = [{ name: 'gateway', pids: () => processTree(proc.pid) }];
        const verified = await client.call({
          op: 'verify',
          line: id,
          target: line.target,
          bytes: o.verifyBytes,
        });
        if (!verified.ok) throw new Error(`verification failed: ${verified.error}`);
        for (let rep = 1; rep <= o.reps; rep++) {
          const p0 = cpuOf(line).reduce((a, b) => a + b, 0);
          const r = await client.must({
            op: 'latency',
            line: id,
            target: line.target,
            count: o.latencyCount,
          });
          await sleep(1500);
          const cpu = cpuOf(line).reduce((a, b) => a + b, 0) - p0;
          const count = r.latency?.count ?? o.latencyCount;
          record(line, 'receipts.cpuUsPerConnect', (cpu * 1e6) / count);
          record(line, 'receipts.connectP50Us', r.latency?.p50Us ?? Number.NaN);
          progress(`${label}: ${((cpu * 1e6) / count).toFixed(0)} CPU-us per CONNECT`);
          for (const d of o.dirs) await transferFigure(o, client, line, sinkPids, 'single', d);
        }
      } finally {
        await client.call({ op: 'reset', line: id });
        await proc.stop();
      }
      const files = dir === undefined ? undefined : receiptFiles(dir);
      rows.push({
        label,
        cpuUsPerConnect: s(line, 'receipts.cpuUsPerConnect'),
        connectP50Us: s(line, 'receipts.connectP50Us'),
        cpuPerGiBUp: s(line, 'single.up.proxyCpuPerGiB'),
        cpuPerGiBDown: s(line, 'single.down.proxyCpuPerGiB'),
        bytesPerReceipt: files === undefined || files.tunnels === 0 ? undefined : files.bytes / files.tunnels,
        notMeasured: undefined,
      });
    } catch (err) {
      line.notMeasured = (err as Error).message.split('\n')[0];
      progress(`${label} FAILED: ${line.notMeasured}`);
      await client.call({ op: 'transfer-close' });
      rows.push({
        label,
        cpuUsPerConnect: undefined,
        connectP50Us: undefined,
        cpuPerGiBUp: undefined,
        cpuPerGiBDown: undefined,
        bytesPerReceipt: undefined,
        notMeasured: line.notMeasured,
      });
    }
  }
  return { rows, lines };
}

/**
 * Issue #19's figures that line (c) does not give (bench/issue19.ts): CONNECT→200 with the decision cache
 * off (every CONNECT a registry lookup and signature checks), and the gateway as shipped — default
 * workers — fresh and with the idle tunnels open (one cycle).
 */
async function issue19Figure(
  o: Options,
  client: LoadClient,
  spawn: SpawnGateway,
  carrier: { certPem: string; keyPem: string },
): Promise<{ miss: Line; shipped: Line }> {
  const miss = newLine('c-miss', '(c) gateway, decision cache off');
  const shipped = newLine('c-shipped', '(c) gateway, default workers');
  const run = async (
    line: Line,
    id: Issue19LineId,
    workers: number,
    cache: boolean,
    fn: () => Promise<void>,
  ) => {
    progress(`${line.label}: starting`);
    try {
      const { proc, port } = await spawn(workers, `gateway-${id}`, '', cache);
      try {
        line.target = {
          kind: 'h2',
          port,
          authority: DESTINATION,
          certPem: carrier.certPem,
          keyPem: carrier.keyPem,
        };
        line.components = [{ name: 'gateway', pids: () => processTree(proc.pid) }];
        await client.must({ op: 'verify', line: id, target: line.target, bytes: o.verifyBytes });
        await fn();
      } finally {
        await client.call({ op: 'idle-close' });
        await client.call({ op: 'reset', line: id });
        await proc.stop();
      }
    } catch (err) {
      line.errors.push(`issue19: ${(err as Error).message.split('\n')[0]}`);
      progress(`${line.label} FAILED: ${(err as Error).message}`);
    }
  };
  await run(miss, 'c-miss', o.gatewayWorkers, false, async () => {
    for (let rep = 1; rep <= o.reps; rep++)
      await latencyFigure({ ...o, latencyCount: Math.min(o.latencyCount, 1000) }, client, miss);
  });
  await run(shipped, 'c-shipped', 0, o.gatewayDecisionCache, () =>
    idleFigure({ ...o, idleCycles: 1 }, client, shipped),
  );
  return { miss, shipped };
}

async function latencyFigure(o: Options, client: LoadClient, line: Line): Promise<void> {
  const p0 = cpuOf(line).reduce((a, b) => a + b, 0);
  const r = await client.must({
    op: 'latency',
    line: line.id,
    target: line.target as Target,
    count: o.latencyCount,
  });
  const cpu = cpuOf(line).reduce((a, b) => a + b, 0) - p0;
  const l = r.latency;
  if (l === undefined) return;
  record(line, 'latency.p50Us', l.p50Us);
  record(line, 'latency.p99Us', l.p99Us);
  record(line, 'latency.proxyCpuUsPerConnect', (cpu * 1e6) / l.count);
  progress(`${line.label} CONNECT->200: p50 ${l.p50Us} us, p99 ${l.p99Us} us`);
}

async function newconnFigure(o: Options, client: LoadClient, line: Line): Promise<void> {
  const r = await client.must({
    op: 'newconn',
    line: line.id,
    target: line.target as Target,
    count: o.newconnCount,
  });
  const l = r.latency;
  if (l === undefined) return;
  record(line, 'newconn.p50Us', l.p50Us);
  record(line, 'newconn.p99Us', l.p99Us);
  if (r.handshake !== undefined) record(line, 'newconn.tlsP50Us', r.handshake.p50Us);
  progress(`${line.label} new connection: p50 ${(l.p50Us / 1000).toFixed(2)} ms`);
}

async function idleFigure(o: Options, client: LoadClient, line: Line): Promise<void> {
  // The gateway keeps a verified decision for decision_cache_ttl_ms (30 s) and does not merge the
  // lookups of one identity and destination: 250 CONNECTs at once on a cold entry fill the lookup lane
  // and the rest get 503 registry_busy. One tunnel before each cycle keeps the entry warm, so the
  // figure measures idle tunnels, not the lane.
  const warm = () =>
    client.must({ op: 'verify', line: line.id, target: line.target as Target, bytes: 64 * 1024 });
  await client.must({ op: 'reset', line: line.id });
  await warm();
  await sleep(o.settleMs);
  const pids = () => proxyPids(line);
  const collect = async () => {
    if (line.inspectPort === undefined) return;
    await collectGarbage(line.inspectPort);
    await sleep(500);
  };
  await collect();
  const idle = {
    tunnels: o.idleTunnels,
    processes: pids().length,
    baselineRssBytes: rssBytes(pids()),
    baselineFds: fdCount(pids()),
    cycles: [] as IdleCycle[],
  };
  line.idle = idle;
  let before = idle.baselineRssBytes;
  for (let cycle = 0; cycle < o.idleCycles; cycle++) {
    if (cycle > 0) await warm();
    const opened = await client.must({
      op: 'idle-open',
      line: line.id,
      target: line.target as Target,
      tunnels: o.idleTunnels,
      perConnection: o.idlePerConnection,
    });
    await sleep(o.settleMs);
    const openRssBytes = rssBytes(pids());
    const openFds = fdCount(pids());
    const closed = await client.must({ op: 'idle-close' });
    await sleep(o.settleMs);
    await collect();
    const c: IdleCycle = {
      openSeconds: opened.seconds ?? Number.NaN,
      closeSeconds: closed.seconds ?? Number.NaN,
      openRssBytes,
      openFds,
      closedRssBytes: rssBytes(pids()),
      closedFds: fdCount(pids()),
      perTunnelBytes: (openRssBytes - before) / o.idleTunnels,
    };
    before = c.closedRssBytes;
    idle.cycles.push(c);
    record(line, 'idle.rssMiB', openRssBytes / MiB);
    record(line, 'idle.perTunnelKiB', c.perTunnelBytes / 1024);
    record(line, 'idle.fds', openFds);
    progress(
      `${line.label} ${o.idleTunnels} idle tunnels (cycle ${cycle + 1}): RSS ${(openRssBytes / MiB).toFixed(1)} MiB, ` +
        `${(c.perTunnelBytes / 1024).toFixed(1)} KiB/tunnel, ${openFds} fds; after close ${(c.closedRssBytes / MiB).toFixed(1)} MiB`,
    );
  }
}

const t0 = Date.now();
function progress(text: string): void {
  process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)}s] ${text}\n`);
}

// ---------- report ----------

function s(line: Line, name: string): Spread | undefined {
  return spread(line.samples[name] ?? []);
}

function maxOf(line: Line, names: string[]): string {
  const all = names.flatMap((n) => line.samples[n] ?? []);
  return all.length === 0 ? '–' : Math.max(...all).toFixed(2);
}

function report(
  o: Options,
  lines: Line[],
  scaleLines: Line[] = [],
  receipts: { rows: ReceiptsRow[]; cost: SigningCost | undefined } | undefined = undefined,
): string {
  const a = lines.find((l) => l.id === 'a') as Line;
  const b = lines.find((l) => l.id === 'b');
  const measured = lines.filter((l) => l.notMeasured === undefined);
  const out: string[] = [];
  const tput = (l: Line, k: string) => show(s(l, `${k}.MBps`));
  out.push(
    `Throughput, MB/s (10^6 B/s), median (min–max) of ${o.reps} repetitions; 1 tunnel moves ${o.singleBytes / MiB} MiB, ` +
      `${o.concTunnels} tunnels move ${o.concBytes / MiB} MiB together over ${o.concConnections} connection(s).`,
    '',
    table(
      [
        'line',
        '1 tunnel up',
        '1 tunnel down',
        `${o.concTunnels} tunnels up`,
        `${o.concTunnels} tunnels down`,
      ],
      measured.map((l) => [
        l.label,
        tput(l, 'single.up'),
        tput(l, 'single.down'),
        tput(l, 'conc.up'),
        tput(l, 'conc.down'),
      ]),
    ),
    '',
    'Ratios of medians: to (a) direct TLS / to (b) naive Node.',
    '',
    table(
      [
        'line',
        '1 up',
        '1 down',
        `${o.concTunnels} up`,
        `${o.concTunnels} down`,
        'CPU/GiB up vs (b)',
        'CPU/GiB down vs (b)',
        'CONNECT p50 vs (b)',
      ],
      measured
        .filter((l) => l.id !== 'a')
        .map((l) => {
          const both = (k: string) => `${ratio(s(l, k), s(a, k))} / ${b ? ratio(s(l, k), s(b, k)) : '–'}`;
          const vsB = (k: string) => (b ? ratio(s(l, k), s(b, k)) : '–');
          return [
            l.label,
            both('single.up.MBps'),
            both('single.down.MBps'),
            both('conc.up.MBps'),
            both('conc.down.MBps'),
            vsB('single.up.proxyCpuPerGiB'),
            vsB('single.down.proxyCpuPerGiB'),
            vsB('latency.p50Us'),
          ];
        }),
    ),
    '',
    'Cost and latency: proxy CPU-seconds per GiB moved (all proxy processes, /proc utime+stime), ' +
      `CONNECT→200 on a warm connection (${o.latencyCount} sequential), new connection = TCP + mTLS + CONNECT→200 ` +
      `(${o.newconnCount} sequential; (a): TCP + TLS to the sink).`,
    '',
    table(
      [
        'line',
        'CPU-s/GiB 1 up',
        'CPU-s/GiB 1 down',
        `CPU-s/GiB ${o.concTunnels} up`,
        `CPU-s/GiB ${o.concTunnels} down`,
        'CONNECT p50 µs',
        'CONNECT p99 µs',
        'proxy CPU µs/CONNECT',
        'new conn p50 ms',
      ],
      measured.map((l) => [
        l.label,
        show(s(l, 'single.up.proxyCpuPerGiB'), 2),
        show(s(l, 'single.down.proxyCpuPerGiB'), 2),
        show(s(l, 'conc.up.proxyCpuPerGiB'), 2),
        show(s(l, 'conc.down.proxyCpuPerGiB'), 2),
        show(s(l, 'latency.p50Us')),
        show(s(l, 'latency.p99Us')),
        show(s(l, 'latency.proxyCpuUsPerConnect')),
        show(spread((l.samples['newconn.p50Us'] ?? []).map((x) => x / 1000)), 2),
      ]),
    ),
    '',
    `Idle tunnels: ${o.idleTunnels} open tunnels (end-to-end TLS established, no traffic), ${o.idleCycles} open/close ` +
      'cycles, measured on fresh proxies before the throughput figures; RSS and fds of the proxy process(es), median ' +
      '(min–max) over cycles; KiB/tunnel = (RSS open − RSS before opening) / tunnels, the 1st cycle against the fresh ' +
      'process, later ones against the previous close (GC timing makes those noisy); drift = RSS after the last close ' +
      '− after the first.',
    '',
    table(
      [
        'line',
        'RSS MiB',
        'KiB/tunnel, 1st cycle',
        'KiB/tunnel, all cycles',
        'fds',
        'RSS before, MiB',
        'RSS after each close, MiB',
        'drift MiB',
      ],
      measured
        .filter((l) => l.idle !== undefined)
        .map((l) => {
          const idle = l.idle as NonNullable<Line['idle']>;
          const closed = idle.cycles.map((c) => c.closedRssBytes / MiB);
          const drift = closed.length > 1 ? (closed.at(-1) as number) - (closed[0] as number) : Number.NaN;
          return [
            l.label,
            show(s(l, 'idle.rssMiB'), 1),
            ((l.idle?.cycles[0]?.perTunnelBytes ?? Number.NaN) / 1024).toFixed(1),
            show(s(l, 'idle.perTunnelKiB'), 1),
            show(s(l, 'idle.fds')),
            (idle.baselineRssBytes / MiB).toFixed(1),
            closed.map((x) => x.toFixed(1)).join(', '),
            Number.isFinite(drift) ? drift.toFixed(1) : '–',
          ];
        }),
    ),
    '',
    'Load client headroom: its CPU use (1.00 = one core) while moving bytes, CPU-s/GiB of the client and the sink, and ' +
      'the CPU used meanwhile by processes outside the bench (in cores; the figures are clean only when it is ~0).',
    '',
    table(
      [
        'line',
        'client util 1 up',
        'client util 1 down',
        `client util ${o.concTunnels} up`,
        'client CPU-s/GiB up/down',
        'sink CPU-s/GiB up/down',
        'other load, cores (max)',
      ],
      measured.map((l) => [
        l.label,
        show(s(l, 'single.up.clientUtil'), 2, false),
        show(s(l, 'single.down.clientUtil'), 2, false),
        show(s(l, 'conc.up.clientUtil'), 2, false),
        `${show(s(l, 'single.up.clientCpuPerGiB'), 2, false)} / ${show(s(l, 'single.down.clientCpuPerGiB'), 2, false)}`,
        `${show(s(l, 'single.up.sinkCpuPerGiB'), 2, false)} / ${show(s(l, 'single.down.sinkCpuPerGiB'), 2, false)}`,
        maxOf(l, [
          'single.up.foreignCores',
          'single.down.foreignCores',
          'conc.up.foreignCores',
          'conc.down.foreignCores',
        ]),
      ]),
    ),
  );
  const counted = measured.filter((l) => Object.keys(l.samples).some((k) => k.includes('.syscallsPerMiB.')));
  if (counted.length > 0) {
    const per = (l: Line, k: string, names: string[]) => {
      const xs = names.map((n) => s(l, `${k}.syscallsPerMiB.${n}`)?.median ?? 0);
      return xs.reduce((x, y) => x + y, 0).toFixed(1);
    };
    const reads = ['read', 'readv', 'recvmsg'];
    const writes = ['write', 'writev', 'sendmsg'];
    const waits = ['epoll_wait', 'epoll_pwait'];
    out.push(
      '',
      'Proxy syscalls per MiB moved (perf stat on syscall tracepoints, median): reads / writes / event-loop waits / epoll_ctl.',
      '',
      table(
        ['line', '1 up', '1 down', `${o.concTunnels} up`, `${o.concTunnels} down`],
        counted.map((l) => [
          l.label,
          ...['single.up', 'single.down', 'conc.up', 'conc.down'].map((k) =>
            s(l, `${k}.syscallsPerMiB.read`) === undefined
              ? '–'
              : `${per(l, k, reads)} / ${per(l, k, writes)} / ${per(l, k, waits)} / ${per(l, k, ['epoll_ctl'])}`,
          ),
        ]),
      ),
    );
  }
  const scaled = scaleLines.filter(
    (l) => s(l, 'conc.up.MBps') !== undefined || s(l, 'conc.down.MBps') !== undefined,
  );
  if (scaled.length > 0) {
    const base = scaled[0] as Line;
    const vs = (l: Line, k: string) => {
      const x = s(l, `${k}.MBps`)?.median;
      const y = s(base, `${k}.MBps`)?.median;
      return x === undefined || y === undefined ? '–' : (x / y).toFixed(2);
    };
    out.push(
      '',
      `Worker scaling: line (c) with \`workers = N\`, ${o.concTunnels} tunnels over ${o.scaleConnections} HTTP/2 connections ` +
        `(node:cluster gives each connection to one worker), ${o.concBytes / MiB} MiB in total, median (min–max) of ${o.reps}. ` +
        `This machine has ${os.availableParallelism()} CPUs, shared with the load client and the sink.`,
      '',
      table(
        [
          'gateway',
          `${o.concTunnels} up MB/s`,
          `${o.concTunnels} down MB/s`,
          `up vs ${base.label.replace('(c) gateway, ', '')}`,
          'down vs same',
          'CPU-s/GiB up',
          'CPU-s/GiB down',
          'client util up/down',
          'other load, cores (max)',
        ],
        scaled.map((l) => [
          l.label,
          show(s(l, 'conc.up.MBps')),
          show(s(l, 'conc.down.MBps')),
          vs(l, 'conc.up'),
          vs(l, 'conc.down'),
          show(s(l, 'conc.up.proxyCpuPerGiB'), 2),
          show(s(l, 'conc.down.proxyCpuPerGiB'), 2),
          `${s(l, 'conc.up.clientUtil')?.median.toFixed(2) ?? '–'} / ${s(l, 'conc.down.clientUtil')?.median.toFixed(2) ?? '–'}`,
          maxOf(l, ['conc.up.foreignCores', 'conc.down.foreignCores']),
        ]),
      ),
    );
  }
  if (receipts !== undefined) out.push('', receiptsReport(receipts.rows, receipts.cost, o.latencyCount));
  const skipped = lines.filter((l) => l.notMeasured !== undefined);
  if (skipped.length > 0) {
    out.push('', ...skipped.map((l) => `${l.label}: not measured: ${l.notMeasured}`));
  }
  const errs = [...lines, ...scaleLines].flatMap((l) => l.errors.map((e) => `${l.label}: ${e}`));
  if (errs.length > 0) out.push('', 'Errors during the run:', ...errs.map((e) => `- ${e}`));
  return out.join('\n');
}

/** The issue #19 table (bench/issue19.ts) from lines (a), (b), (c) and the issue19 figure's gateways. */
function issue19Text(o: Options, lines: Line[], extra: { miss: Line; shipped: Line } | undefined): string {
  const byId = (id: string) => lines.find((l) => l.id === id && l.notMeasured === undefined);
  const pick = { a: byId('a'), b: byId('b'), c: byId('c'), miss: extra?.miss, shipped: extra?.shipped };
  const readings = (l: Line | undefined): IdleReadings | undefined =>
    l?.idle === undefined || l.idle.cycles.length === 0
      ? undefined
      : {
          processes: l.idle.processes,
          baselineRssBytes: l.idle.baselineRssBytes,
          openRssBytes: l.idle.cycles.map((c) => c.openRssBytes),
          closedRssBytes: l.idle.cycles.map((c) => c.closedRssBytes),
          firstPerTunnelBytes: (l.idle.cycles[0] as IdleCycle).perTunnelBytes,
        };
  return issue19Report({
    get: (line, key) => {
      const l = pick[line];
      return l === undefined ? undefined : s(l, key);
    },
    idle: { b: readings(pick.b), c: readings(pick.c), shipped: readings(pick.shipped) },
    shippedProcesses: extra?.shipped.idle?.processes,
    concTunnels: o.concTunnels,
    concConnections: o.concConnections,
    idleTunnels: o.idleTunnels,
    growthMethod:
      `VmRSS of the process tree ${o.settleMs} ms (--settle-ms) after each close of ${o.idleCycles} cycles, ` +
      (o.idleGc
        ? 'line (c) after a full GC through its inspector (--idle-gc; (b) without), so only what V8 cannot free counts'
        : 'no forced GC, so heap growth to its plateau counts'),
  });
}

function gitDescribe(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: repoRoot,
      encoding: 'utf8',
    }).trim();
    const dirty =
      execFileSync('git', ['status', '--porcelain'], { cwd: repoRoot, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head}+dirty` : head;
  } catch {
    return 'unknown';
  }
}

// ---------- main ----------

async function main(): Promise<void> {
  const o = options();
  const machine = {
    ...machineDescription(),
    availableParallelism: os.availableParallelism(),
    node: process.version,
    openssl: process.versions.openssl,
  };
  progress(
    `${o.quick ? 'QUICK ' : ''}run: lines ${o.lines.join(',')}, ${o.reps} reps; ${machine.nproc} × ${machine.cpuModel}, node ${machine.node}`,
  );
  const work = await mkdtemp(path.join(os.tmpdir(), 'agw-bench-'));
  o.work = work;
  if (o.syscalls) {
    const why = syscallCountingUnavailable();
    if (why !== undefined) {
      progress(`--syscalls ignored: ${why}`);
      o.syscalls = false;
    }
  }
  const cleanups: (() => Promise<void> | void)[] = [];
  const lines = o.lines.map((id) => newLine(id));
  const scaleLines: Line[] = [];
  const byId = (id: LineId) => lines.find((l) => l.id === id);
  let client: LoadClient | undefined;
  let gatewayConfig = '';
  let gatewayNodeFlags: string[] = [];
  let sidecarNodeFlags: string[] = [];
  const deadline = t0 + o.maxMinutes * 60_000;
  const timeLeft = () => Date.now() < deadline;

  try {
    // PKI and the sink.
    const pki = await createPki();
    const file = (name: string, text: string, mode = 0o600) => {
      const p = path.join(work, name);
      writeFileSync(p, text);
      chmodSync(p, mode);
      return p;
    };
    const caPath = file('ca.pem', pki.caPem, 0o644);
    const serverCert = file('server.pem', pki.server.certPem);
    const serverKey = file('server.key', pki.server.keyPem);
    const sinkCert = file('sink.pem', pki.sink.certPem);
    const sinkKey = file('sink.key', pki.sink.keyPem);
    const carrier = await pki.carrier(IDENTITY);

    const sinkPort = await freePort();
    const sink = nodeScript(
      'sink',
      path.join(here, 'sink.js'),
      ['--port', String(sinkPort), '--cert', sinkCert, '--key', sinkKey],
      path.join(work, 'sink.log'),
    );
    cleanups.push(() => sink.stop());
    await started(sink, sinkPort);
    const sinkPids = () => [sink.pid];
    const a = byId('a') as Line;
    a.target = { kind: 'direct', port: sinkPort };

    // (b) and the optional experimental line (x) are the same kind of process: --port --cert --key.
    const proxies: [Line | undefined, string, string, string[]][] = [
      [byId('b'), 'naive-proxy', path.join(here, 'naive-proxy.js'), []],
      [byId('x'), 'extra-proxy', o.extraProxy ?? '', o.extraProxyNodeArgs],
    ];
    for (const [line, name, script, nodeArgs] of proxies) {
      if (line === undefined) continue;
      const port = await freePort();
      const proc = nodeScript(
        name,
        script,
        ['--port', String(port), '--cert', serverCert, '--key', serverKey],
        path.join(work, `${name}.log`),
        process.env,
        nodeArgs,
      );
      cleanups.push(() => proc.stop());
      await started(proc, port);
      line.target = {
        kind: 'h2',
        port,
        authority: `127.0.0.1:${sinkPort}`,
        certPem: carrier.certPem,
        keyPem: carrier.keyPem,
      };
      line.components = [{ name, pids: () => processTree(proc.pid) }];
    }

    // Gateway (c) and sidecar (d) share one registry and one gateway process.
    const c = byId('c');
    const d = byId('d');
    let gateway: Managed | undefined;
    let gatewayPort = 0;
    /** Start a gateway on fresh ports against the bench registry; each gets its own config and log. */
    let spawnGateway: SpawnGateway | undefined;
    if (c || d) {
      const gatewayMain = path.join(repoRoot, 'dist', 'gateway', 'main.js');
      if (!existsSync(gatewayMain)) {
        for (const l of [c, d])
          if (l) l.notMeasured = 'gateway not built (dist/gateway/main.js missing; run npm run build)';
      } else {
        try {
          progress('starting PostgreSQL and seeding the registry');
          const pg = await startBenchPostgres((url) => migrate(url));
          cleanups.push(() => pg.stop());
          const principal = principalKey();
          await seedGrant(pg.databaseUrl, {
            principalId: 'bench-principal',
            principal,
            permissionId: 'bench-perm-software',
            identity: IDENTITY,
            subjectSpkiDer: carrier.spkiDer,
            destination: DESTINATION,
          });
          gatewayNodeFlags = [...interpreterFlags(gatewayMain), ...o.gatewayNodeArgs];
          spawnGateway = async (workers, name, extraToml = '', decisionCache = o.gatewayDecisionCache) => {
            const port = await freePort();
            const inspect = o.idleGc && name === 'gateway' ? await freePort() : undefined;
            if (c !== undefined && inspect !== undefined) c.inspectPort = inspect;
            const config =
              gatewayToml(o, {
                workers,
                port,
                adminPort: await freePort(),
                certPath: serverCert,
                keyPath: serverKey,
                databaseUrl: pg.databaseUrl,
                sinkPort,
                decisionCache,
              }) + extraToml;
            const proc = nodeScript(
              name,
              gatewayMain,
              ['--config', file(`${name}.toml`, config)],
              path.join(work, `${name}.log`),
              process.env,
              inspect === undefined
                ? gatewayNodeFlags
                : [...gatewayNodeFlags, `--inspect=127.0.0.1:${inspect}`],
            );
            cleanups.push(() => proc.stop());
            await started(proc, port);
            // Workers come up one by one behind the primary's listening socket: wait for all of them.
            const until = Date.now() + 30_000;
            const n = workers === 0 ? os.availableParallelism() : workers;
            while (n > 1 && processTree(proc.pid).length < n + 1 && Date.now() < until) await sleep(100);
            return { proc, port, config };
          };
          const first = await spawnGateway(o.gatewayWorkers, 'gateway');
          const proc = first.proc;
          gateway = proc;
          gatewayPort = first.port;
          gatewayConfig = first.config;
          if (c) {
            c.target = {
              kind: 'h2',
              port: gatewayPort,
              authority: DESTINATION,
              certPem: carrier.certPem,
              keyPem: carrier.keyPem,
            };
            c.components = [{ name: 'gateway', pids: () => processTree(proc.pid) }];
          }
          if (d) {
            sidecarNodeFlags = [
              ...interpreterFlags(path.join(repoRoot, 'dist', 'sidecar', 'main.js')),
              ...o.sidecarNodeArgs,
            ];
            const reason = await startSidecarLine(d, {
              nodeFlags: sidecarNodeFlags,
              work,
              caPath,
              gatewayPort,
              gateway: proc,
              databaseUrl: pg.databaseUrl,
              principal,
              cleanups,
            });
            if (reason !== undefined) d.notMeasured = reason;
          }
        } catch (err) {
          const why = `gateway set-up failed: ${(err as Error).message.split('\n').slice(0, 12).join(' | ')}`;
          for (const l of [c, d]) if (l && l.notMeasured === undefined) l.notMeasured = why;
        }
      }
    }

    client = new LoadClient(path.join(work, 'load-client.log'), o.opTimeoutMs);
    await client.must({
      op: 'setup',
      setup: {
        caPem: pki.caPem,
        sinkName: SINK_NAME,
        streamWindowBytes: 4 * MiB,
        connectionWindowBytes: 32 * MiB,
        opTimeoutMs: o.opTimeoutMs,
      },
    });

    // Every line must carry the bytes intact before it is timed (this also warms it up).
    for (const line of lines) {
      if (line.notMeasured !== undefined || line.target === undefined) {
        line.notMeasured ??= 'not set up';
        continue;
      }
      let last: OpResult | undefined;
      for (let attempt = 0; attempt < 20; attempt++) {
        last = await client.call({ op: 'verify', line: line.id, target: line.target, bytes: o.verifyBytes });
        if (last.ok) break;
        await client.call({ op: 'reset', line: line.id });
        await sleep(500);
      }
      if (last?.ok) progress(`${line.label}: verified (${last.detail})`);
      else {
        const extra =
          line.id === 'c' || line.id === 'd'
            ? ` | gateway log: ${gateway?.tail(5).replace(/\n/g, ' | ')}`
            : '';
        line.notMeasured = `verification failed: ${last && !last.ok ? last.error : '?'}${extra}`;
        progress(`${line.label}: ${line.notMeasured}`);
      }
    }

    const live = lines.filter((l) => l.notMeasured === undefined);
    // Memory first, while the proxies are fresh: after the throughput figures their heaps hold hundreds of
    // MiB of garbage whose collection would swamp a per-tunnel figure.
    if (o.figures.has('idle')) {
      for (const line of live.filter((l) => l.id !== 'a')) {
        if (!timeLeft()) break;
        try {
          await idleFigure(o, client, line);
        } catch (err) {
          line.errors.push(`idle: ${(err as Error).message}`);
          progress(`${line.label} idle FAILED: ${(err as Error).message}`);
          await client.call({ op: 'idle-close' });
        }
      }
    }
    for (let rep = 1; rep <= o.reps && timeLeft(); rep++) {
      progress(`repetition ${rep}/${o.reps}`);
      for (const line of live) {
        const attempt = async (what: string, fn: () => Promise<void>) => {
          if (!timeLeft()) return;
          try {
            await fn();
          } catch (err) {
            line.errors.push(`rep ${rep} ${what}: ${(err as Error).message}`);
            progress(`${line.label} ${what} FAILED: ${(err as Error).message}`);
            await client?.call({ op: 'transfer-close' });
            await client?.call({ op: 'reset', line: line.id });
          }
        };
        for (const kind of ['single', 'conc'] as const) {
          if (!o.figures.has(kind)) continue;
          for (const dir of o.dirs) {
            await attempt(`${kind} ${dir}`, () =>
              transferFigure(o, client as LoadClient, line, sinkPids, kind, dir),
            );
          }
        }
        if (o.figures.has('latency') && line.target?.kind !== 'direct') {
          await attempt('latency', () => latencyFigure(o, client as LoadClient, line));
        }
        if (o.figures.has('newconn') && line.target?.kind !== 'http1') {
          await attempt('new connection', () => newconnFigure(o, client as LoadClient, line));
        }
      }
    }
    let issue19: { miss: Line; shipped: Line } | undefined;
    if (o.figures.has('issue19') && spawnGateway !== undefined && byId('c')?.notMeasured === undefined) {
      if (timeLeft()) {
        issue19 = await issue19Figure(o, client, spawnGateway, carrier);
        scaleLines.push(issue19.miss, issue19.shipped);
      }
    }
    if (o.figures.has('scale') && spawnGateway !== undefined && byId('c')?.notMeasured === undefined) {
      for (const workers of o.scaleWorkers) {
        if (!timeLeft()) break;
        const line = newLine(`c${workers}w`, `(c) gateway, workers = ${workers}`);
        scaleLines.push(line);
        try {
          await scaleFigure(o, client, line, sinkPids, workers, spawnGateway, carrier);
        } catch (err) {
          line.errors.push(`scale: ${(err as Error).message}`);
          progress(`${line.label} FAILED: ${(err as Error).message}`);
          await client.call({ op: 'transfer-close' });
        }
      }
    }
    let receipts: { rows: ReceiptsRow[]; cost: SigningCost | undefined } | undefined;
    if (o.figures.has('receipts') && spawnGateway !== undefined && byId('c')?.notMeasured === undefined) {
      if (timeLeft()) {
        const figure = await receiptsFigure(o, client, sinkPids, spawnGateway, carrier);
        scaleLines.push(...figure.lines);
        progress('receipts: raw signing cost (PEM, then PKCS#11 in swtpm)');
        receipts = { rows: figure.rows, cost: await signingCost() };
      }
    }
    if (!timeLeft())
      for (const l of live) l.errors.push(`stopped early: --max-minutes ${o.maxMinutes} reached`);

    const text = `${report(o, lines, scaleLines, receipts)}\n\n${issue19Text(o, lines, issue19)}`;
    process.stdout.write(`\n${text}\n\n`);
    mkdirSync(path.dirname(o.out), { recursive: true });
    const summaries = Object.fromEntries(
      [...lines, ...scaleLines].map((l) => [
        l.id,
        Object.fromEntries(Object.keys(l.samples).map((k) => [k, s(l, k)])),
      ]),
    );
    writeFileSync(
      o.out,
      `${JSON.stringify(
        {
          startedAt: new Date(t0).toISOString(),
          seconds: (Date.now() - t0) / 1000,
          git: gitDescribe(),
          machine,
          options: { ...o, figures: [...o.figures] },
          gatewayConfig,
          gatewayNodeFlags,
          sidecarNodeFlags,
          lines: [...lines, ...scaleLines].map((l) => ({
            id: l.id,
            label: l.label,
            notMeasured: l.notMeasured,
            components: l.components.map((x) => x.name),
            samples: l.samples,
            summary: summaries[l.id],
            idle: l.idle,
            errors: l.errors,
          })),
          table: text,
        },
        null,
        2,
      )}\n`,
    );
    progress(`wrote ${path.relative(process.cwd(), o.out)}`);
  } finally {
    client?.stop();
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        process.stderr.write(`cleanup: ${(err as Error).message}\n`);
      }
    }
    if (o.keep) progress(`kept ${work} (logs, config, certificates)`);
    else rmSync(work, { recursive: true, force: true });
  }
  if (o.figures.has('fleet')) fleetFigure();
}

/**
 * Issue #18's figure (bench/fleet-lookups.ts, also `npm run bench:fleet`): uncached CONNECT→200 through
 * 1, 2 and 3 gateways on a primary and a streaming replica. It starts its own clusters and gateways, so
 * it runs after everything above has stopped, in a child whose table is printed in this run's output.
 */
function fleetFigure(): void {
  progress('fleet: uncached CONNECT→200 with 1, 2 and 3 gateways, primary-only vs replica reads');
  const script = fileURLToPath(new URL('./fleet-lookups.js', import.meta.url));
  execFileSync(process.execPath, [script], { stdio: 'inherit' });
}

/** Line (d): swtpm + a TPM key provisioned by the sidecar itself, a grant for it, the sidecar. */
async function startSidecarLine(
  d: Line,
  ctx: {
    nodeFlags: string[];
    work: string;
    caPath: string;
    gatewayPort: number;
    gateway: Managed;
    databaseUrl: string;
    principal: ReturnType<typeof principalKey>;
    cleanups: (() => Promise<void> | void)[];
  },
): Promise<string | undefined> {
  const sidecarMain = path.join(repoRoot, 'dist', 'sidecar', 'main.js');
  if (!existsSync(sidecarMain)) return 'sidecar not built (dist/sidecar/main.js missing)';
  const missing = missingTpmTools();
  if (missing !== undefined) return `no software TPM: ${missing}`;
  let tpm: BenchTpm | undefined;
  let tpmError = '';
  for (let attempt = 0; attempt < 3 && tpm === undefined; attempt++) {
    try {
      tpm = await startBenchTpm();
    } catch (err) {
      tpmError = (err as Error).message;
      progress(`software TPM start failed (attempt ${attempt + 1}): ${tpmError}`);
    }
  }
  if (tpm === undefined) return `software TPM (swtpm + tpm2-abrmd) did not start: ${tpmError}`;
  const liveTpm = tpm;
  ctx.cleanups.push(() => liveTpm.stop());
  const pin = path.join(ctx.work, 'tpm-user.pin');
  const soPin = path.join(ctx.work, 'tpm-so.pin');
  writeFileSync(pin, 'bench-user-pin-1234', { mode: 0o600 });
  writeFileSync(soPin, 'bench-so-pin-5678', { mode: 0o600 });
  const carrierPath = path.join(ctx.work, 'tpm-carrier.pem');
  const spkiPath = path.join(ctx.work, 'tpm-key.spki.der');
  const tpmFlags = [
    '--tpm-tcti',
    TABRMD_TCTI,
    '--tpm-key-handle',
    '0x81010004',
    '--pkcs11-store',
    tpm.env['TPM2_PKCS11_STORE'] as string,
    '--pkcs11-token',
    'agw-bench',
    '--pin-file',
    pin,
  ];
  const env = { ...process.env, ...tpm.env };
  try {
    execFileSync(
      process.execPath,
      [
        sidecarMain,
        'provision',
        ...tpmFlags,
        '--so-pin-file',
        soPin,
        '--identity',
        TPM_IDENTITY,
        '--out-cert',
        carrierPath,
        '--out-spki',
        spkiPath,
      ],
      {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 120_000,
      },
    );
  } catch (err) {
    const e = err as { stderr?: Buffer; stdout?: Buffer; message: string };
    return `sidecar provision failed: ${(e.stderr?.toString() || e.stdout?.toString() || e.message).trim().split('\n').slice(-5).join(' | ')}`;
  }
  await seedGrant(ctx.databaseUrl, {
    principalId: 'bench-principal',
    principal: ctx.principal,
    permissionId: 'bench-perm-tpm',
    identity: TPM_IDENTITY,
    subjectSpkiDer: readFileSync(spkiPath),
    destination: DESTINATION,
  });
  const port = await freePort();
  const proc = spawnLogged(
    'sidecar',
    process.execPath,
    [
      ...ctx.nodeFlags,
      sidecarMain,
      ...tpmFlags,
      '--listen',
      `127.0.0.1:${port}`,
      '--gateway',
      `127.0.0.1:${ctx.gatewayPort}`,
      '--gateway-name',
      'localhost',
      '--client-cert',
      carrierPath,
      '--ca-cert',
      ctx.caPath,
    ],
    path.join(ctx.work, 'sidecar.log'),
    env,
  );
  ctx.cleanups.push(() => proc.stop());
  try {
    await started(proc, port);
  } catch (err) {
    return (err as Error).message.split('\n').slice(0, 8).join(' | ');
  }
  d.target = { kind: 'http1', port, authority: DESTINATION };
  d.components = [
    { name: 'sidecar', pids: () => processTree(proc.pid) },
    { name: 'gateway', pids: () => processTree(ctx.gateway.pid) },
  ];
  return undefined;
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
