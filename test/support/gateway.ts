// Run the real gateway process (`node dist/gateway/main.js --config <tmp>.toml`, so `npm run build` first)
// and talk to it like a sidecar: HTTP/2 over mTLS with a carrier certificate, CONNECT streams.
//
//   const gw = await startGatewayProcess({ databaseUrl, ca, config: { upstream: { overrides: {...} } } });
//   const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
//   const t = await openTunnel(session, 'docstore:443');   // t.status, t.stream (a Duplex when 200)
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'smol-toml';
import type { Carrier, PemPair, TestCa } from '../../dev-support/pki.js';
import { createTestCa, writePemPair } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { type ManagedProcess, spawnNode, spawnProcess } from './processes.js';

export const GATEWAY_MAIN = path.join(repoRoot, 'dist', 'gateway', 'main.js');

type TomlTable = Record<string, unknown>;

export type GatewayProcess = {
  readonly proc: ManagedProcess;
  readonly port: number;
  /** Admin (/healthz /readyz /metrics) port, when enabled. */
  readonly adminPort: number | undefined;
  readonly dir: string;
  readonly configPath: string;
  readonly certPath: string;
  readonly keyPath: string;
  readonly ca: TestCa;
  readonly caPem: string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number>;
  /** Stop (if running) and remove the temp dir. */
  cleanup(): Promise<void>;
  /** JSON log lines with this msg, in order. */
  logs(msg: string): Record<string, unknown>[];
  /**
   * The lines with this msg (and matching `match`) once there is at least one. The gateway writes its log
   * in batches (up to 100 ms late), so a line about a response the client already has may not be out yet.
   */
  waitForLogs(
    msg: string,
    match?: (line: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>[]>;
};

export type GatewayProcessOptions = {
  readonly databaseUrl: string;
  /** Merged over the defaults section by section ({ upstream: { connect_timeout_ms: 500 } }). */
  readonly config?: Record<string, TomlTable>;
  /** false: no admin listener (default: one on a free port). */
  readonly admin?: boolean;
  readonly ca?: TestCa;
  readonly serverCert?: PemPair;
  readonly env?: Record<string, string | undefined>;
  /** Resolve once spawned, without waiting for "gateway listening" (startup failure tests). */
  readonly waitReady?: boolean;
  /** argv run in front of `node main.js ...` (e.g. a namespace wrapper from dns-namespace.ts). */
  readonly launcher?: readonly string[];
};

export function assertBuilt(): void {
  if (!existsSync(GATEWAY_MAIN)) throw new Error(`${GATEWAY_MAIN} missing: run \`npm run build\` first`);
}

/** Write a gateway config TOML built from sections; returns its path. */
export async function writeGatewayConfig(file: string, sections: Record<string, TomlTable>): Promise<string> {
  await writeFile(file, stringify(sections));
  return file;
}

export async function startGatewayProcess(opts: GatewayProcessOptions): Promise<GatewayProcess> {
  assertBuilt();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-gateway-'));
  const ca = opts.ca ?? (await createTestCa());
  const pair = opts.serverCert ?? (await ca.serverCert());
  const { certPath, keyPath } = await writePemPair(dir, 'server', pair);
  const port = await freePort();
  const adminPort = opts.admin === false ? undefined : await freePort();
  const base: Record<string, TomlTable> = {
    server: {
      listen_addr: `127.0.0.1:${port}`,
      tls_cert_path: certPath,
      tls_key_path: keyPath,
      workers: 1,
      drain_timeout_ms: 5000,
    },
    // Test destinations are loopback listeners, which the default deny list refuses.
    upstream: { allow_cidrs: ['127.0.0.0/8'] },
    admin: { listen_addr: adminPort === undefined ? '' : `127.0.0.1:${adminPort}` },
    observability: { log_level: 'debug' },
    policy: { database_url: opts.databaseUrl, query_timeout_ms: 500 },
  };
  const sections: Record<string, TomlTable> = { ...base };
  for (const [name, table] of Object.entries(opts.config ?? {})) {
    sections[name] = { ...(sections[name] ?? {}), ...table };
  }
  const configPath = await writeGatewayConfig(path.join(dir, 'gateway.toml'), sections);
  const spawnOptions = { name: 'gateway', env: { AGENT_GATEWAY_LOG_STDOUT: undefined, ...opts.env } };
  const [wrapper, ...wrapperArgs] = opts.launcher ?? [];
  const proc =
    wrapper === undefined
      ? spawnNode(GATEWAY_MAIN, ['--config', configPath], spawnOptions)
      : spawnProcess(
          wrapper,
          [...wrapperArgs, process.execPath, GATEWAY_MAIN, '--config', configPath],
          spawnOptions,
        );
  if (opts.waitReady !== false) {
    await proc.waitForLog((l) => l.json?.['msg'] === 'gateway listening', 30_000);
  }
  const logs = (msg: string) =>
    proc.lines.filter((l) => l.json?.['msg'] === msg).map((l) => l.json as Record<string, unknown>);
  let stopped: Promise<number> | undefined;
  const stop = (signal: NodeJS.Signals = 'SIGTERM') => {
    stopped ??= proc.stop(signal, 20_000);
    return stopped;
  };
  return {
    proc,
    port,
    adminPort,
    dir,
    configPath,
    certPath,
    keyPath,
    ca,
    caPem: ca.certPem,
    stop,
    async cleanup() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
    logs,
    async waitForLogs(msg, match = () => true, timeoutMs = 5000) {
      await proc.waitForLog(
        (l) => l.json?.['msg'] === msg && match(l.json as Record<string, unknown>),
        timeoutMs,
      );
      return logs(msg).filter(match);
    },
  };
}

export type ConnectOptions = {
  /** CA that issued the gateway certificate (verified like the sidecar does). */
  readonly ca: string;
  /** Client certificate; undefined = present none. */
  readonly carrier?: Carrier | undefined;
  readonly windowBytes?: number;
};

/** One mTLS HTTP/2 connection to the gateway, as a sidecar opens it. */
export function connectH2(port: number, opts: ConnectOptions): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://localhost:${port}`, {
      ca: opts.ca,
      servername: 'localhost',
      ...(opts.carrier ? { cert: opts.carrier.certPem, key: opts.carrier.keyPem } : {}),
      settings: { initialWindowSize: opts.windowBytes ?? 4 * 1024 * 1024 },
    });
    const onError = (err: Error) => reject(err);
    session.once('error', onError);
    session.once('connect', () => {
      session.off('error', onError);
      session.on('error', () => {});
      if (opts.windowBytes !== undefined) session.setLocalWindowSize(opts.windowBytes * 4);
      resolve(session);
    });
  });
}

export type TunnelResult = {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly stream: ClientHttp2Stream;
  /** Resolves with everything the gateway sent after the headers, once the stream ends. */
  readonly body: () => Promise<Buffer>;
};

/** Open a CONNECT stream and wait for the response headers. */
export function openTunnel(
  session: ClientHttp2Session,
  authority: string,
  extraHeaders: Record<string, string> = {},
  method = 'CONNECT',
): Promise<TunnelResult> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> =
      method === 'CONNECT'
        ? { ':method': 'CONNECT', ':authority': authority, ...extraHeaders }
        : { ':method': method, ':authority': authority, ':scheme': 'https', ':path': '/', ...extraHeaders };
    const stream = session.request(headers, { endStream: method !== 'CONNECT' });
    const chunks: Buffer[] = [];
    const ended = new Promise<Buffer>((res) => {
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => res(Buffer.concat(chunks)));
      stream.on('close', () => res(Buffer.concat(chunks)));
    });
    // Collect data only when the caller asks for the body; a tunnel user reads the stream itself.
    stream.pause();
    stream.once('error', reject);
    stream.once('response', (h) => {
      stream.off('error', reject);
      stream.on('error', () => {});
      resolve({
        status: Number(h[':status']),
        headers: h,
        stream,
        body: () => {
          stream.resume();
          return ended;
        },
      });
    });
  });
}

/** Send `data` through an open tunnel and collect `expected` bytes back. */
export function roundTrip(
  stream: ClientHttp2Stream,
  data: Buffer,
  expected = data.length,
  timeoutMs = 10_000,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`roundTrip: got ${n} of ${expected} bytes within ${timeoutMs} ms`));
    }, timeoutMs);
    const onData = (c: Buffer) => {
      chunks.push(c);
      n += c.length;
      if (n >= expected) {
        cleanup();
        resolve(Buffer.concat(chunks));
      }
    };
    const onClose = () => {
      cleanup();
      reject(new Error(`roundTrip: stream closed after ${n} of ${expected} bytes`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('close', onClose);
      stream.pause();
    };
    stream.on('data', onData);
    stream.once('close', onClose);
    stream.resume();
    stream.write(data);
  });
}

/** Resolve when the stream has closed (or reject after timeoutMs). */
export function closed(
  stream: ClientHttp2Stream,
  timeoutMs = 10_000,
): Promise<{ rstCode: number | undefined }> {
  return new Promise((resolve, reject) => {
    if (stream.closed || stream.destroyed) return resolve({ rstCode: stream.rstCode });
    const timer = setTimeout(() => reject(new Error(`stream not closed within ${timeoutMs} ms`)), timeoutMs);
    stream.once('close', () => {
      clearTimeout(timer);
      resolve({ rstCode: stream.rstCode });
    });
  });
}

export async function closeSession(session: ClientHttp2Session): Promise<void> {
  if (session.destroyed) return;
  await new Promise<void>((resolve) => {
    session.close(() => resolve());
    setTimeout(() => {
      session.destroy();
      resolve();
    }, 2000).unref();
  });
}

/**
 * One series' current value from the gateway's /metrics: `series` is the name with its labels exactly as
 * rendered (`agent_gateway_bytes_total{direction="client_to_dest"}`); undefined when it is not there.
 */
export async function scrapeMetric(adminPort: number, series: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** Remove a temp dir made by a test. */
export async function makeTempDir(prefix = 'agw-test-'): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), prefix));
}
