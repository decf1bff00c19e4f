/**
 * `npm run bench:fleet`: CONNECT→200 with the decision cache off (every CONNECT a registry lookup) through
 * 1, 2 and 3 gateway processes on one PostgreSQL primary, with lookups on the primary or on a streaming
 * replica (policy.replica_database_url; docs/scaling.md), and the primary's and the replica's CPU per 1,000
 * lookups (user + system of the postmaster and all its children, /proc/<pid>/stat).
 *
 * Everything is on this machine: a throwaway primary + replica (dev-support), N real gateways
 * (dist/gateway/main.js), a loopback TCP sink as destination, and the load client in this process (one
 * mTLS HTTP/2 connection per gateway, CONCURRENCY streams each, CONNECT → 200 → END_STREAM, repeat). On a
 * 2-core machine PostgreSQL, the gateways and the client share the cores, so the scaling is bounded by
 * the machine, not by the design: bench/README.md "Fleet" says what the figures do and do not show.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stringify } from 'smol-toml';
import { startReplica } from '../dev-support/pg-replica.js';
import { type Carrier, createCarrier, createPrincipalKey, createTestCa } from '../dev-support/pki.js';
import { freePort } from '../dev-support/ports.js';
import { createMigratedDatabase, startPostgres } from '../dev-support/postgres.js';
import { grant } from '../dev-support/registry-seed.js';
import { cpuSeconds, machineDescription, processTree } from './support/proc.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');
const GATEWAY_MAIN = path.join(repoRoot, 'dist', 'gateway', 'main.js');
const IDENTITY = 'bench-fleet-agent';
const DESTINATION = 'bench-sink:443';

type Gateway = { readonly child: ChildProcess; readonly port: number; readonly adminPort: number };
type Row = {
  gateways: number;
  reads: 'primary' | 'replica';
  connectsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  primaryCpuPer1000: number;
  replicaCpuPer1000: number;
  gatewayCpuPer1000: number;
  bySource: Record<string, number>;
};

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

function postmasterPid(dataDir: string): number {
  return Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n', 1)[0]);
}

/** CPU seconds of `root` and all its descendants; a process that exits in between is lost (rare here). */
function treeCpu(root: number): Map<number, number> {
  return new Map(processTree(root).map((pid) => [pid, cpuSeconds([pid])]));
}

function cpuSince(before: Map<number, number>, root: number): number {
  let total = 0;
  for (const [pid, now] of treeCpu(root)) total += now - (before.get(pid) ?? 0);
  return total;
}

async function startSink(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.resume();
  });
  await new Promise<void>((r) => server.listen({ host: '127.0.0.1', port: 0 }, r));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

async function startGateway(dir: string, name: string, sections: Record<string, unknown>): Promise<Gateway> {
  const port = await freePort();
  const adminPort = await freePort();
  const config = path.join(dir, `${name}.toml`);
  const s = sections as Record<string, Record<string, unknown>>;
  await writeFile(
    config,
    stringify({
      ...s,
      server: { ...s['server'], listen_addr: `127.0.0.1:${port}` },
      admin: { listen_addr: `127.0.0.1:${adminPort}` },
    }),
  );
  const child = spawn(process.execPath, [GATEWAY_MAIN, '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, AGENT_GATEWAY_LOG_STDOUT: undefined },
  });
  const tail: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (line) => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
    });
  }
  // Logging at warn (the bench measures lookups, not log lines), so readiness comes from /readyz.
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited ${child.exitCode}: ${tail.join('\n')}`);
    const ok = await fetch(`http://127.0.0.1:${adminPort}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`${name} not ready: ${tail.join('\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, port, adminPort };
}

async function stopGateway(g: Gateway): Promise<void> {
  if (g.child.exitCode !== null) return;
  const exited = new Promise((r) => g.child.once('exit', r));
  g.child.kill('SIGTERM');
  await exited;
}

function connectH2(port: number, caPem: string, carrier: Carrier): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://localhost:${port}`, {
      ca: caPem,
      servername: 'localhost',
      cert: carrier.certPem,
      key: carrier.keyPem,
    });
    session.once('error', reject);
    session.once('connect', () => {
      session.off('error', reject);
      session.on('error', () => {});
      resolve(session);
    });
  });
}

/** CONNECT, wait for the answer, END_STREAM, wait for the close. Resolves with ms to the answer, or NaN. */
function oneConnect(session: http2.ClientHttp2Session): Promise<number> {
  return new Promise((resolve) => {
    const started = performance.now();
    let status = 0;
    let answeredAt = 0;
    const stream = session.request({ ':method': 'CONNECT', ':authority': DESTINATION }, { endStream: false });
    stream.on('error', () => {});
    stream.once('response', (h) => {
      status = Number(h[':status']);
      answeredAt = performance.now();
      stream.end();
      stream.resume();
    });
    stream.once('close', () => resolve(status === 200 ? answeredAt - started : Number.NaN));
  });
}

async function scrapeLookups(adminPort: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^agent_gateway_registry_lookups_total\{source="([a-z_]+)"\} (\d+)/gm)) {
    out[m[1] as string] = Number(m[2]);
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '6' },
      concurrency: { type: 'string', default: '8' },
      quick: { type: 'boolean', default: false },
    },
  });
  const seconds = values.quick ? 2 : Number(values.seconds);
  const concurrency = Number(values.concurrency);
  const machine = machineDescription();
  process.stdout.write(
    `fleet lookups bench: ${machine.nproc} cores (${machine.cpuModel}), ${machine.memGiB} GiB, ` +
      `${seconds} s per line after 1 s warm-up, ${concurrency} concurrent CONNECTs per gateway\n`,
  );

  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-bench-fleet-'));
  const pg = await startPostgres();
  const sink = await startSink();
  let replica: Awaited<ReturnType<typeof startReplica>> | undefined;
  const gateways: Gateway[] = [];
  try {
    // Started first and then kept streaming, as test/support/fleet.ts does.
    replica = await startReplica(pg.dir);
    const dbUrl = await createMigratedDatabase(pg.url, 'agw_bench_fleet');
    const carrier = await createCarrier(IDENTITY);
    await grant(dbUrl, {
      principalId: 'org-bench-fleet',
      principal: createPrincipalKey(),
      identity: IDENTITY,
      subjectSpkiDer: carrier.spkiDer,
      destination: DESTINATION,
    });
    await replica.caughtUp(pg.url, 60_000);
    const replicaUrl = new URL(replica.url);
    replicaUrl.pathname = `/${new URL(dbUrl).pathname.slice(1)}`;
    const ca = await createTestCa();
    const server = await ca.serverCert();
    const certPath = path.join(dir, 'server.pem');
    const keyPath = path.join(dir, 'server-key.pem');
    await writeFile(certPath, server.certPem);
    await writeFile(keyPath, server.keyPem, { mode: 0o600 });
    const primaryPid = postmasterPid(pg.dataDir);
    const replicaPid = postmasterPid(path.join(replica.dir, 'data'));

    const rows: Row[] = [];
    for (const reads of ['primary', 'replica'] as const) {
      for (const n of [1, 2, 3]) {
        const sections = {
          server: { tls_cert_path: certPath, tls_key_path: keyPath, workers: 1 },
          upstream: {
            allow_cidrs: ['127.0.0.0/8'],
            overrides: { [DESTINATION]: `127.0.0.1:${sink.port}` },
          },
          observability: { log_level: 'warn' },
          policy: {
            database_url: dbUrl,
            decision_cache_max_entries: 0,
            ...(reads === 'replica' ? { replica_database_url: [replicaUrl.toString()] } : {}),
          },
          limits: { connect_rate_per_identity: 0 },
          http2: { max_resets_per_10s: 1_000_000 },
        };
        for (let i = 0; i < n; i++) gateways.push(await startGateway(dir, `gw-${reads}-${n}-${i}`, sections));
        const sessions = await Promise.all(gateways.map((g) => connectH2(g.port, ca.certPem, carrier)));
        let measuring = false;
        let stop = false;
        const latencies: number[] = [];
        let failed = 0;
        const loop = async (s: http2.ClientHttp2Session) => {
          while (!stop) {
            const ms = await oneConnect(s);
            if (!measuring) continue;
            if (Number.isNaN(ms)) failed++;
            else latencies.push(ms);
          }
        };
        const loops = sessions.flatMap((s) => Array.from({ length: concurrency }, () => loop(s)));
        await new Promise((r) => setTimeout(r, 1000));
        const lookupsBefore = await Promise.all(gateways.map((g) => scrapeLookups(g.adminPort)));
        const p0 = treeCpu(primaryPid);
        const r0 = treeCpu(replicaPid);
        const g0 = new Map(gateways.map((g) => [g.child.pid as number, cpuSeconds([g.child.pid as number])]));
        const t0 = performance.now();
        measuring = true;
        await new Promise((r) => setTimeout(r, seconds * 1000));
        measuring = false;
        const elapsed = (performance.now() - t0) / 1000;
        const primaryCpu = cpuSince(p0, primaryPid);
        const replicaCpu = cpuSince(r0, replicaPid);
        const gatewayCpu = gateways.reduce(
          (sum, g) => sum + cpuSeconds([g.child.pid as number]) - (g0.get(g.child.pid as number) ?? 0),
          0,
        );
        const lookupsAfter = await Promise.all(gateways.map((g) => scrapeLookups(g.adminPort)));
        stop = true;
        await Promise.all(loops);
        for (const s of sessions) s.destroy();
        const bySource: Record<string, number> = {};
        lookupsAfter.forEach((after, i) => {
          for (const [k, v] of Object.entries(after))
            bySource[k] = (bySource[k] ?? 0) + v - (lookupsBefore[i]?.[k] ?? 0);
        });
        if (failed > 0) throw new Error(`${failed} CONNECTs were not answered 200 (${reads}, ${n} gateways)`);
        const sorted = latencies.sort((a, b) => a - b);
        const k = latencies.length / 1000;
        rows.push({
          gateways: n,
          reads,
          connectsPerSecond: latencies.length / elapsed,
          p50Ms: percentile(sorted, 50),
          p99Ms: percentile(sorted, 99),
          primaryCpuPer1000: primaryCpu / k,
          replicaCpuPer1000: replicaCpu / k,
          gatewayCpuPer1000: gatewayCpu / k,
          bySource,
        });
        const row = rows.at(-1) as Row;
        process.stdout.write(
          `${reads.padEnd(7)} reads, ${n} gateway(s): ${row.connectsPerSecond.toFixed(0)} CONNECT→200/s, ` +
            `p50 ${row.p50Ms.toFixed(2)} ms, p99 ${row.p99Ms.toFixed(2)} ms; CPU s per 1,000 lookups: ` +
            `primary ${row.primaryCpuPer1000.toFixed(3)}, replica ${row.replicaCpuPer1000.toFixed(3)}, ` +
            `gateways ${row.gatewayCpuPer1000.toFixed(3)}; answered by ${JSON.stringify(bySource)}\n`,
        );
        await Promise.all(gateways.splice(0).map(stopGateway));
      }
    }
    process.stdout.write(
      `\n| reads | gateways | CONNECT→200/s | p50 ms | p99 ms | primary CPU s / 1,000 lookups | replica CPU s / 1,000 lookups | gateway CPU s / 1,000 |\n` +
        `| --- | --- | --- | --- | --- | --- | --- | --- |\n` +
        rows
          .map(
            (r) =>
              `| ${r.reads} | ${r.gateways} | ${r.connectsPerSecond.toFixed(0)} | ${r.p50Ms.toFixed(2)} | ` +
              `${r.p99Ms.toFixed(2)} | ${r.primaryCpuPer1000.toFixed(3)} | ${r.replicaCpuPer1000.toFixed(3)} | ` +
              `${r.gatewayCpuPer1000.toFixed(3)} |`,
          )
          .join('\n') +
        '\n',
    );
  } finally {
    await Promise.all(gateways.splice(0).map(stopGateway));
    await replica?.destroy();
    await sink.close();
    await pg.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench fleet: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
