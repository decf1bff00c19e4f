// The real sidecar process for e2e tests: a TPM key provisioned by the sidecar's own `provision`
// subcommand in a real swtpm (behind tpm2-abrmd), an HTTPS destination with its own CA, curl as the agent,
// and a raw CONNECT client for TCP or Unix-socket listeners. Needs `npm run build` (dist/sidecar/main.js).
import { writeFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { createTestCa } from '../../dev-support/pki.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { type CommandResult, runCommand } from '../../dev-support/run-command.js';
import { startSwtpm, TABRMD_TCTI, type TpmHandle } from '../../dev-support/swtpm.js';
import { type ManagedProcess, spawnNode } from './processes.js';

export const SIDECAR_MAIN = path.join(repoRoot, 'dist', 'sidecar', 'main.js');
export const SIDECAR_HANDLE = '0x81010004';
export const SIDECAR_TOKEN = 'sidecar-e2e';

export type Destination = { port: number; caPath: string; close(): Promise<void> };

/** HTTPS destination with its own CA: GET /hello, GET /slow?ms=N. */
export async function startHttpsDestination(dir: string): Promise<Destination> {
  const ca = await createTestCa('sidecar e2e destination CA');
  const pair = await ca.serverCert();
  const caPath = path.join(dir, 'destination-ca.pem');
  await writeFile(caPath, ca.certPem);
  const server = https.createServer({ key: pair.keyPem, cert: pair.certPem }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://localhost');
    if (url.pathname === '/hello') {
      res.end('hello through the TPM-authenticated tunnel\n');
    } else if (url.pathname === '/slow') {
      setTimeout(() => res.end('slow done\n'), Number(url.searchParams.get('ms') ?? '1000'));
    } else {
      res.statusCode = 404;
      res.end('not found\n');
    }
  });
  const port = await new Promise<number>((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)),
  );
  return {
    port,
    caPath,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export async function curl(args: string[], timeoutMs = 30_000): Promise<CommandResult> {
  // A clean environment: NO_PROXY or *_proxy variables of the host must not change what curl does.
  return runCommand('curl', ['-sS', '--max-time', String(timeoutMs / 1000), ...args], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
    timeoutMs: timeoutMs + 5000,
  });
}

/**
 * Raw CONNECT to the proxy (a TCP port or a Unix socket path); returns the status code, the headers and
 * the body of the answer, once the proxy has closed the connection.
 */
export function rawConnect(
  at: number | string,
  authority: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: string; body: string }> {
  return new Promise((resolve, reject) => {
    const socket =
      typeof at === 'number' ? net.connect({ host: '127.0.0.1', port: at }) : net.connect({ path: at });
    let text = '';
    socket.setTimeout(30_000, () => socket.destroy(new Error(`no answer to CONNECT ${authority}`)));
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
    });
    socket.once('end', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
      const split = text.indexOf('\r\n\r\n');
      resolve({ status, headers: text.slice(0, split), body: text.slice(split + 4) });
    });
    socket.once('error', reject);
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`);
    socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${extra.join('')}\r\n`);
  });
}

export async function waitFor<T>(
  what: string,
  fn: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export type SidecarKey = {
  readonly tpm: TpmHandle;
  readonly pinFile: string;
  readonly carrierPath: string;
  readonly spkiPath: string;
  /** Run `agent_gateway_sidecar provision` for `identity` (creates the key once, then reuses it). */
  provision(extra?: string[]): Promise<CommandResult>;
  /** Run flags for this key; `overrides` replace or add flags. */
  runArgs(gateway: { port: number; caPath: string }, overrides?: Record<string, string>): string[];
  spawn(args: string[], env?: Record<string, string | undefined>): ManagedProcess;
};

/** A swtpm with PIN files in `dir`; call provision() to create the key and its carrier certificate. */
export async function startSidecarTpm(dir: string, identity: string): Promise<SidecarKey> {
  const tpm = await startSwtpm();
  const pinFile = path.join(dir, 'user.pin');
  const soPinFile = path.join(dir, 'so.pin');
  await writeFile(pinFile, 'user-pin-4711', { mode: 0o600 });
  await writeFile(soPinFile, 'so-pin-0815', { mode: 0o600 });
  const carrierPath = path.join(dir, 'carrier.pem');
  const spkiPath = path.join(dir, 'spki.der');
  const tpmFlags = [
    '--tpm-tcti',
    TABRMD_TCTI,
    '--tpm-key-handle',
    SIDECAR_HANDLE,
    '--pkcs11-store',
    tpm.env.TPM2_PKCS11_STORE,
    '--pkcs11-token',
    SIDECAR_TOKEN,
    '--pin-file',
    pinFile,
  ];
  return {
    tpm,
    pinFile,
    carrierPath,
    spkiPath,
    provision: (extra = []) =>
      runCommand(
        process.execPath,
        [
          SIDECAR_MAIN,
          'provision',
          ...tpmFlags,
          '--so-pin-file',
          soPinFile,
          '--identity',
          identity,
          '--out-cert',
          carrierPath,
          '--out-spki',
          spkiPath,
          ...extra,
        ],
        { env: { ...process.env, ...tpm.env }, timeoutMs: 120_000 },
      ),
    runArgs(gateway, overrides = {}) {
      const flags: Record<string, string> = {
        '--gateway': `127.0.0.1:${gateway.port}`,
        '--gateway-name': 'localhost',
        '--ca-cert': gateway.caPath,
        '--client-cert': carrierPath,
        '--drain-timeout-ms': '10000',
        ...overrides,
      };
      return [
        ...tpmFlags,
        ...Object.entries(flags)
          .flat()
          .filter((a) => a !== ''),
      ];
    },
    spawn: (args, env = {}) =>
      spawnNode(SIDECAR_MAIN, args, { name: 'sidecar', env: { ...tpm.env, ...env } }),
  };
}
