// A real software TPM for tests and bench line (d): a TPM stack (tpm-stack.ts, as the demo runs its own) in
// a fresh temp dir on free ports, plus the tpm2-pkcs11 token and key helpers. If the test process dies
// without stop(), the daemons are killed and the dir removed all the same (reap-on-exit.ts).
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { reapOnExit } from './reap-on-exit.js';
import { killAndWait, logTails, startTpmStack, type TpmLike, type TpmStack, tpmRun } from './tpm-stack.js';

export { processAlive } from './proc.js';
export {
  missingTpmTools,
  TABRMD_TCTI,
  type TpmEnv,
  type TpmLike,
} from './tpm-stack.js';

export interface TpmHandle extends TpmStack {
  /** Fresh temp state dir: tpmstate/, store/ (tpm2-pkcs11 sqlite), *.log, env (shell-sourceable). */
  dir: string;
  /** swtpm control port (= port + 1). */
  ctrlPort: number;
  /** Kill abrmd, dbus, swtpm (by pid, waiting until gone) and remove the dir. Idempotent. */
  stop(): Promise<void>;
}

export async function startSwtpm(): Promise<TpmHandle> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-tpm-'));
  // If this process dies without stop(): SIGTERM (then SIGKILL) the three daemons and remove the dir.
  const reaper = reapOnExit({ dir, signal: 'SIGTERM' });
  let stack: TpmStack;
  try {
    stack = await startTpmStack(dir, { onPids: (pids) => reaper.setPids(pids) });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    reaper.release();
    throw err;
  }
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const pid of [stack.pids.abrmd, stack.pids.dbus, stack.pids.swtpm]) await killAndWait(pid);
    rmSync(dir, { recursive: true, force: true });
    reaper.release();
  };
  return { ...stack, ctrlPort: stack.port + 1, stop };
}

/** `tpm2_ptool init` (once per store) + `addtoken`: a tpm2-pkcs11 token labelled `token`. */
export async function provisionToken(
  tpm: TpmLike,
  opts: { token: string; userPin: string; soPin: string },
): Promise<void> {
  const storeArg = `--path=${tpm.env.TPM2_PKCS11_STORE}`;
  let pid = /id:\s*(\d+)/.exec(await tpmRun(tpm, 'tpm2_ptool', ['listprimaries', storeArg]))?.[1];
  if (!pid) {
    const out = await tpmRun(tpm, 'tpm2_ptool', ['init', storeArg]);
    pid = /id:\s*(\d+)/.exec(out)?.[1] ?? '1';
  }
  await tpmRun(tpm, 'tpm2_ptool', [
    'addtoken',
    `--pid=${pid}`,
    `--label=${opts.token}`,
    `--userpin=${opts.userPin}`,
    `--sopin=${opts.soPin}`,
    storeArg,
  ]);
}

/** `tpm2_ptool addkey`: a sensitive, never-extractable key (default P-256) labelled `label` in `token`. */
export async function addKey(
  tpm: TpmLike,
  opts: { token: string; label: string; userPin: string; algorithm?: string },
): Promise<void> {
  await tpmRun(tpm, 'tpm2_ptool', [
    'addkey',
    `--label=${opts.token}`,
    `--key-label=${opts.label}`,
    `--userpin=${opts.userPin}`,
    `--algorithm=${opts.algorithm ?? 'ecc256'}`,
    `--path=${tpm.env.TPM2_PKCS11_STORE}`,
  ]);
}

/** SubjectPublicKeyInfo DER of key `label` in `token` (no PIN needed), via pkcs11-tool. Synchronous. */
export function readPublicSpki(tpm: TpmLike, opts: { token: string; label: string }): Buffer {
  const out = path.join(
    tpm.dir,
    `spki-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2)}.der`,
  );
  try {
    execFileSync(
      'pkcs11-tool',
      [
        '--module',
        tpm.env.PKCS11_MODULE_PATH,
        '--token-label',
        opts.token,
        '--read-object',
        '--type',
        'pubkey',
        '--label',
        opts.label,
        '-o',
        out,
      ],
      { env: { ...process.env, ...tpm.env }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 },
    );
    return readFileSync(out);
  } catch (err) {
    const e = err as { stderr?: Buffer; stdout?: Buffer; message?: string };
    const output = `${e.stderr?.toString() ?? ''}${e.stdout?.toString() ?? ''}`.trim();
    throw new Error(
      `pkcs11-tool --read-object --type pubkey --label ${opts.label} (token ${opts.token}) failed: ${e.message ?? ''}\n` +
        `${output}\n${logTails(tpm.dir)}`,
    );
  } finally {
    rmSync(out, { force: true });
  }
}
