// A real software TPM for tests and bench line (d), the set-up sidecar/README.md describes: swtpm (TCP
// on 127.0.0.1, data port P, control port P+1) behind tpm2-abrmd on a private session D-Bus, in a fresh
// temp state dir. swtpm alone has 3 transient object slots and no resource manager, so tpm2_ptool /
// tpm2-pkcs11 go through abrmd (TCTI `tabrmd:bus_type=session`). Every daemon logs to a file in the dir.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorText } from '../core/error-text.js';
import { freePortPair } from './ports.js';
import { reapOnExit } from './reap-on-exit.js';
import { runCommand } from './run-command.js';

export interface TpmEnv extends Record<string, string> {
  DBUS_SESSION_BUS_ADDRESS: string;
  TPM2TOOLS_TCTI: string;
  TPM2_PKCS11_TCTI: string;
  TPM2_PKCS11_STORE: string;
  PKCS11_MODULE_PATH: string;
  TPM2_PKCS11_MODULE: string;
  OPENSSL_ENGINES: string;
}

export interface TpmHandle {
  /** Fresh temp state dir: tpmstate/, store/ (tpm2-pkcs11 sqlite), *.log, env (shell-sourceable). */
  dir: string;
  /** swtpm data port on 127.0.0.1 (TCTI `swtpm:host=127.0.0.1,port=<port>`). */
  port: number;
  /** swtpm control port (= port + 1). */
  ctrlPort: number;
  /** Variables a client of this TPM needs (merge over process.env). */
  env: TpmEnv;
  pids: { swtpm: number; dbus: number; abrmd: number };
  /** Kill abrmd, dbus, swtpm (by pid, waiting until gone) and remove the dir. Idempotent. */
  stop(): Promise<void>;
}

/** Anything with a state dir and the client env (a TpmHandle, or the same values persisted elsewhere). */
export type TpmLike = Pick<TpmHandle, 'dir' | 'env'>;

export const TABRMD_TCTI = 'tabrmd:bus_type=session';

function findLib(rel: string): string {
  const roots = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu'];
  try {
    for (const d of readdirSync('/usr/lib'))
      if (d.endsWith('-linux-gnu')) roots.push(path.join('/usr/lib', d));
  } catch {
    // no /usr/lib?
  }
  for (const r of roots) if (existsSync(path.join(r, rel))) return path.join(r, rel);
  throw new Error(
    `${rel} not found under /usr/lib/<multiarch>/ (install libtpm2-pkcs11-1 / libengine-pkcs11-openssl)`,
  );
}

/** Why startSwtpm() cannot work on this machine, or undefined when every tool and library is installed. */
export function missingTpmTools(): string | undefined {
  for (const tool of ['swtpm', 'dbus-daemon', 'tpm2-abrmd', 'tpm2_getcap', 'tpm2_ptool']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      return `${tool} is not installed`;
    }
  }
  try {
    findLib('pkcs11/libtpm2_pkcs11.so');
    findLib('engines-3/pkcs11.so');
  } catch (err) {
    return errorText(err);
  }
  return undefined;
}

function tailSync(file: string, lines = 25): string {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    return text ? text.split('\n').slice(-lines).join('\n') : '(empty)';
  } catch {
    return '(missing)';
  }
}

function logTails(dir: string): string {
  return ['swtpm.log', 'dbus.log', 'abrmd.log']
    .map((f) => `--- ${path.join(dir, f)} ---\n${tailSync(path.join(dir, f))}`)
    .join('\n');
}

/** True while `pid` exists and is not a zombie. */
export function processAlive(pid: number): boolean {
  if (!(pid > 0)) return false;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

async function killAndWait(pid: number, timeoutMs = 5000): Promise<void> {
  if (!processAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + timeoutMs;
  while (processAlive(pid) && Date.now() < deadline) await sleep(25);
  if (processAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return;
    }
    const hard = Date.now() + 2000;
    while (processAlive(pid) && Date.now() < hard) await sleep(25);
  }
}

async function readPidFile(file: string, timeoutMs = 5000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const pid = Number((await readFile(file, 'utf8')).trim());
      if (pid > 0) return pid;
    } catch {
      // not yet written
    }
    if (Date.now() >= deadline) throw new Error(`no pid in ${file}`);
    await sleep(20);
  }
}

/** Run a command with the TPM env; on failure the error carries its output and the daemons' log tails. */
async function tpmRun(tpm: TpmLike, cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  const r = await runCommand(cmd, args, { env: { ...process.env, ...tpm.env }, timeoutMs });
  if (r.code !== 0) {
    throw new Error(
      `${cmd} ${args.filter((a) => !/pin=/.test(a)).join(' ')} exited ${r.code}\n` +
        `${(r.stderr + r.stdout).trim().slice(-3000)}\n${logTails(tpm.dir)}`,
    );
  }
  return r.stdout;
}

export async function startSwtpm(): Promise<TpmHandle> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-tpm-'));
  const store = path.join(dir, 'store');
  await mkdir(path.join(dir, 'tpmstate'));
  await mkdir(store);
  const pids = { swtpm: 0, dbus: 0, abrmd: 0 };
  // If this process dies without stop(): SIGTERM (then SIGKILL) the three daemons and remove the dir.
  const reaper = reapOnExit({ dir, signal: 'SIGTERM' });
  const track = () => reaper.setPids([pids.abrmd, pids.dbus, pids.swtpm]);

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const pid of [pids.abrmd, pids.dbus, pids.swtpm]) await killAndWait(pid);
    rmSync(dir, { recursive: true, force: true });
    reaper.release();
  };

  try {
    const env: TpmEnv = {
      DBUS_SESSION_BUS_ADDRESS: '',
      TPM2TOOLS_TCTI: TABRMD_TCTI,
      TPM2_PKCS11_TCTI: TABRMD_TCTI,
      TPM2_PKCS11_STORE: store,
      PKCS11_MODULE_PATH: findLib('pkcs11/libtpm2_pkcs11.so'),
      TPM2_PKCS11_MODULE: '',
      OPENSSL_ENGINES: path.dirname(findLib('engines-3/pkcs11.so')),
    };
    env.TPM2_PKCS11_MODULE = env.PKCS11_MODULE_PATH;

    // 1. swtpm, daemonized (it binds before forking, so a taken port fails here): retry on new ports.
    let port = 0;
    let lastErr = '';
    for (let attempt = 0; attempt < 5 && pids.swtpm === 0; attempt++) {
      port = await freePortPair();
      const r = await runCommand(
        'swtpm',
        [
          'socket',
          '--tpm2',
          '--server',
          `type=tcp,port=${port},bindaddr=127.0.0.1`,
          '--ctrl',
          `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
          '--tpmstate',
          `dir=${path.join(dir, 'tpmstate')}`,
          '--flags',
          'not-need-init,startup-clear',
          '--daemon',
          '--pid',
          `file=${path.join(dir, 'swtpm.pid')}`,
          '--log',
          `file=${path.join(dir, 'swtpm.log')},level=1`,
        ],
        { timeoutMs: 30_000 },
      );
      if (r.code === 0) pids.swtpm = await readPidFile(path.join(dir, 'swtpm.pid'));
      else lastErr = (r.stderr + r.stdout).trim();
    }
    if (pids.swtpm === 0) throw new Error(`swtpm did not start: ${lastErr}`);
    track();

    // 2. private session bus; address and pid are printed on fds 3 and 4 (files, so nothing holds a pipe).
    const addrFile = path.join(dir, 'dbus.addr');
    const pidFile = path.join(dir, 'dbus.pid');
    const fds = [
      openSync(path.join(dir, 'dbus.log'), 'a'),
      openSync(addrFile, 'w'),
      openSync(pidFile, 'w'),
    ] as const;
    try {
      const code = await new Promise<number | null>((resolve, reject) => {
        const child = spawn(
          'dbus-daemon',
          [
            '--session',
            '--fork',
            `--address=unix:path=${path.join(dir, 'dbus.sock')}`,
            '--print-address=3',
            '--print-pid=4',
          ],
          { stdio: ['ignore', fds[0], fds[0], fds[1], fds[2]] },
        );
        child.once('error', reject);
        child.once('exit', (c) => resolve(c));
      });
      if (code !== 0) throw new Error(`dbus-daemon exited ${code}`);
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    pids.dbus = await readPidFile(pidFile);
    track();
    env.DBUS_SESSION_BUS_ADDRESS = (await readFile(addrFile, 'utf8')).split('\n')[0]!.trim();
    if (!env.DBUS_SESSION_BUS_ADDRESS) throw new Error('dbus-daemon printed no address');

    // 3. tpm2-abrmd on that bus (--allow-root only matters when we are root; --flush-all clears stale transients).
    const abrmdLog = openSync(path.join(dir, 'abrmd.log'), 'a');
    const abrmd = spawn(
      'tpm2-abrmd',
      ['--session', '--allow-root', '--flush-all', `--tcti=swtpm:host=127.0.0.1,port=${port}`],
      {
        stdio: ['ignore', abrmdLog, abrmdLog],
        env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: env.DBUS_SESSION_BUS_ADDRESS },
      },
    );
    closeSync(abrmdLog);
    abrmd.on('error', () => {});
    abrmd.unref();
    pids.abrmd = abrmd.pid ?? 0;
    if (pids.abrmd === 0) throw new Error('tpm2-abrmd did not spawn');
    track();

    // 4. wait until the TPM answers through abrmd.
    const tpm: TpmLike = { dir, env };
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await runCommand('tpm2_getcap', ['properties-fixed'], {
        env: { ...process.env, ...env },
        timeoutMs: 10_000,
      });
      if (r.code === 0) break;
      if (!processAlive(pids.abrmd)) throw new Error('tpm2-abrmd exited during start-up');
      if (Date.now() >= deadline) throw new Error(`TPM not reachable through abrmd: ${r.stderr.trim()}`);
      await sleep(200);
    }

    // 5. swtpm's default DA policy locks the TPM for ~17 min after 3 wrong PINs: relax it for tests.
    await tpmRun(tpm, 'tpm2_dictionarylockout', [
      '--setup-parameters',
      '--max-tries=32',
      '--recovery-time=10',
      '--lockout-recovery-time=60',
    ]);

    await writeFile(
      path.join(dir, 'env'),
      Object.entries(env)
        .map(([k, v]) => `export ${k}='${v}'\n`)
        .join(''),
    );
    return { dir, port, ctrlPort: port + 1, env, pids, stop };
  } catch (err) {
    const logs = logTails(dir);
    await stop();
    const msg = errorText(err);
    throw new Error(`startSwtpm: ${msg}\n${logs}`);
  }
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
