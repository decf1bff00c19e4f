/**
 * What one gateway connection costs the sidecar when its key is in a TPM: mTLS 1.3 + HTTP/2 handshakes
 * to a local HTTP/2 server with the TPM key (swtpm behind tpm2-abrmd, the libp11 engine, exactly the
 * SecureContext the sidecar builds) against the same handshake with a software P-256 key. Sequential
 * handshakes give the latency of a reconnect; parallel ones show that the TPM serializes signatures.
 *
 *   npm run build && node dist/bench/sidecar-handshake.js [--count 200] [--parallel 16]
 */

import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { missingTpmTools, startSwtpm as startBenchTpm, TABRMD_TCTI } from '../dev-support/swtpm.js';
import { createTpmSecureContext, type TpmKeyConfig } from '../sidecar/tpm-context.js';
import { createPki } from './support/pki.js';

const { values } = parseArgs({
  options: { count: { type: 'string', default: '200' }, parallel: { type: 'string', default: '16' } },
});
const COUNT = Number(values.count);
const PARALLEL = Number(values.parallel);

function connectOnce(port: number, secureContext: tls.SecureContext): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://localhost:${port}`, {
      createConnection: () =>
        tls.connect({
          host: '127.0.0.1',
          port,
          servername: 'localhost',
          secureContext,
          ALPNProtocols: ['h2'],
        }),
    });
    session.once('error', reject);
    session.once('connect', () => {
      const ms = performance.now() - t0;
      session.close(() => resolve(ms));
    });
  });
}

async function measure(
  port: number,
  ctx: tls.SecureContext,
): Promise<{ seq: number[]; parallelPerSec: number }> {
  for (let i = 0; i < 5; i++) await connectOnce(port, ctx);
  const seq: number[] = [];
  for (let i = 0; i < COUNT; i++) seq.push(await connectOnce(port, ctx));
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < COUNT) {
        next++;
        await connectOnce(port, ctx);
      }
    }),
  );
  return { seq, parallelPerSec: (COUNT / (performance.now() - t0)) * 1000 };
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}

async function main(): Promise<void> {
  const missing = missingTpmTools();
  if (missing !== undefined) throw new Error(`no software TPM: ${missing}`);
  const tpm = await startBenchTpm();
  const work = await mkdtemp(path.join(os.tmpdir(), 'agw-bench-handshake-'));
  try {
    // The pkcs11 module reads its TCTI and D-Bus address from this process's environment.
    Object.assign(process.env, tpm.env);
    const pinFile = path.join(work, 'pin');
    await writeFile(pinFile, 'bench-pin-1234', { mode: 0o600 });
    await writeFile(path.join(work, 'so-pin'), 'bench-so-5678', { mode: 0o600 });
    const cfg: TpmKeyConfig = {
      tcti: TABRMD_TCTI,
      keyHandle: 0x81010004,
      store: tpm.env['TPM2_PKCS11_STORE'],
      token: 'bench-handshake',
      keyLabel: '0x81010004',
      pinFile,
      modulePath: undefined,
    };
    const certPath = path.join(work, 'carrier.pem');
    // Provisioned by the CLI in its own process, so the login measured below is this process's first.
    execFileSync(
      process.execPath,
      [
        path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'sidecar', 'main.js'),
        'provision',
        '--tpm-tcti',
        cfg.tcti,
        '--tpm-key-handle',
        '0x81010004',
        '--pkcs11-store',
        cfg.store ?? '',
        '--pkcs11-token',
        cfg.token,
        '--pin-file',
        pinFile,
        '--so-pin-file',
        path.join(work, 'so-pin'),
        '--identity',
        'bench-handshake',
        '--out-cert',
        certPath,
        '--log-level',
        'warn',
      ],
      { env: process.env, stdio: 'inherit' },
    );
    const pki = await createPki();
    const server = http2.createSecureServer({
      key: pki.server.keyPem,
      cert: pki.server.certPem,
      requestCert: true,
      rejectUnauthorized: false,
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;

    const t0 = performance.now();
    const tpmCtx = createTpmSecureContext(cfg, await readFile(certPath, 'utf8'), pki.caPem);
    const loginMs = performance.now() - t0;
    const soft = await pki.carrier('bench-software');
    const softCtx = tls.createSecureContext({
      key: soft.keyPem,
      cert: soft.certPem,
      ca: pki.caPem,
      minVersion: 'TLSv1.3',
    });

    const rows: string[] = [];
    for (const [name, ctx] of [
      ['software key', softCtx],
      ['TPM key (swtpm)', tpmCtx],
    ] as const) {
      const r = await measure(port, ctx);
      rows.push(
        `| ${name} | ${pct(r.seq, 50).toFixed(2)} | ${pct(r.seq, 95).toFixed(2)} | ${(1000 / pct(r.seq, 50)).toFixed(0)} | ${r.parallelPerSec.toFixed(0)} |`,
      );
    }
    server.close();
    process.stdout.write(
      `sidecar gateway handshake (mTLS 1.3 + HTTP/2 SETTINGS), ${COUNT} sequential, then ${COUNT} with ${PARALLEL} in parallel\n` +
        `TPM SecureContext creation (engine load + token login, first in this process): ${loginMs.toFixed(0)} ms\n\n` +
        '| client key | p50 ms | p95 ms | sequential /s | parallel /s |\n|---|---|---|---|---|\n' +
        `${rows.join('\n')}\n`,
    );
  } finally {
    await tpm.stop();
    await rm(work, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`sidecar-handshake bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
