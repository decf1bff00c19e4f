// One software TPM in one directory, the set-up sidecar/README.md describes, the way both users run it: the
// tests' throwaway TPMs (swtpm.ts, removed when the test process ends) and the demo's long-lived ones (cli.ts,
// called by demo/lib.sh, running until the demo stops them by their pid files).
//
// swtpm (TCP on 127.0.0.1, data port P, control port P+1) behind tpm2-abrmd on a private session D-Bus. swtpm
// alone has 3 transient object slots and no resource manager, so tpm2_ptool / tpm2-pkcs11 go through abrmd
// (TCTI `tabrmd:bus_type=session`). Every daemon runs detached from the process that started it, so it
// outlives that process unless someone stops it.
//
// Layout of DIR: tpmstate/ (kept: a restarted stack has the same keys), store/ (tpm2-pkcs11 sqlite),
// swtpm.log dbus.log abrmd.log, swtpm.pid dbus.pid (the daemons' own), dbus.addr, dbus.sock, and env: the
// client environment as shell `export` lines.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorText } from '../core/error-text.js';
import { freePortPair } from './ports.js';
import { processAlive } from './proc.js';
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

export interface TpmStack {
  dir: string;
  /** swtpm data port on 127.0.0.1 (TCTI `swtpm:host=127.0.0.1,port=<port>`); the control port is port + 1. */
  port: number;
  /** Variables a client of this TPM needs (merge over process.env); also in DIR/env. */
  env: TpmEnv;
  pids: { swtpm: number; dbus: number; abrmd: number };
}

/** Anything with a state dir and the client env (a running stack, or the same values persisted elsewhere). */
export type TpmLike = Pick<TpmStack, 'dir' | 'env'>;

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

/** Why startTpmStack() cannot work on this machine, or undefined when every tool and library is installed. */
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

/** The last lines of the three daemons' logs, for error messages. */
export function logTails(dir: string): string {
  return ['swtpm.log', 'dbus.log', 'abrmd.log']
    .map((f) => `--- ${path.join(dir, f)} ---\n${tailSync(path.join(dir, f))}`)
    .join('\n');
}

/** SIGTERM, wait up to `timeoutMs`, then SIGKILL. */
export async function killAndWait(pid: number, timeoutMs = 5000): Promise<void> {
  if (pid <= 0 || !processAlive(pid)) return;
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
export async function tpmRun(
  tpm: TpmLike,
  cmd: string,
  args: string[],
  timeoutMs = 120_000,
): Promise<string> {
  const r = await runCommand(cmd, args, { env: { ...process.env, ...tpm.env }, timeoutMs });
  if (r.code !== 0) {
    throw new Error(
      `${cmd} ${args.filter((a) => !/pin=/.test(a)).join(' ')} exited ${r.code}\n` +
        `${(r.stderr + r.stdout).trim().slice(-3000)}\n${logTails(tpm.dir)}`,
    );
  }
  return r.stdout;
}

const shellQuote = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;

/** swtpm, daemonized; it binds before forking, so a taken port fails here. Resolves with its pid. */
async function startSwtpmDaemon(dir: string, port: number): Promise<number> {
  const pidFile = path.join(dir, 'swtpm.pid');
  await rm(pidFile, { force: true });
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
      `file=${pidFile}`,
      '--log',
      `file=${path.join(dir, 'swtpm.log')},level=1`,
    ],
    { timeoutMs: 30_000 },
  );
  if (r.code !== 0)
    throw new Error(`swtpm did not start on 127.0.0.1:${port}/${port + 1}: ${(r.stderr + r.stdout).trim()}`);
  return readPidFile(pidFile);
}

/** A private session bus; address and pid are printed on fds 3 and 4 (files, so nothing holds a pipe). */
async function startDbus(dir: string): Promise<{ pid: number; address: string }> {
  const addrFile = path.join(dir, 'dbus.addr');
  const pidFile = path.join(dir, 'dbus.pid');
  await rm(path.join(dir, 'dbus.sock'), { force: true });
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
  const pid = await readPidFile(pidFile);
  const address = (await readFile(addrFile, 'utf8')).split('\n')[0]?.trim() ?? '';
  if (!address) throw new Error('dbus-daemon printed no address');
  return { pid, address };
}

export interface StartTpmStackOptions {
  /** swtpm's data port; without it a free pair is chosen (and another one if it is taken meanwhile). */
  port?: number | undefined;
  /** Told the daemons' pids whenever one more runs (a throwaway stack hands them to its reaper). */
  onPids?: ((pids: readonly number[]) => void) | undefined;
}

/**
 * Start swtpm, D-Bus and tpm2-abrmd for DIR (created if missing; its TPM state is kept) and wait until the
 * TPM answers through abrmd. On failure whatever was started is stopped again and the error carries the
 * daemons' log tails.
 */
export async function startTpmStack(dir: string, opts: StartTpmStackOptions = {}): Promise<TpmStack> {
  const store = path.join(dir, 'store');
  await mkdir(path.join(dir, 'tpmstate'), { recursive: true });
  await mkdir(store, { recursive: true });
  await chmod(dir, 0o700);
  const pids = { swtpm: 0, dbus: 0, abrmd: 0 };
  const track = () => opts.onPids?.([pids.abrmd, pids.dbus, pids.swtpm].filter((p) => p > 0));

  try {
    const module = findLib('pkcs11/libtpm2_pkcs11.so');
    const env: TpmEnv = {
      DBUS_SESSION_BUS_ADDRESS: '',
      TPM2TOOLS_TCTI: TABRMD_TCTI,
      TPM2_PKCS11_TCTI: TABRMD_TCTI,
      TPM2_PKCS11_STORE: store,
      PKCS11_MODULE_PATH: module,
      TPM2_PKCS11_MODULE: module,
      OPENSSL_ENGINES: path.dirname(findLib('engines-3/pkcs11.so')),
    };

    // 1. swtpm: on the given port, or on free ones, retried when one is taken between choosing and binding.
    let port = opts.port ?? 0;
    for (let attempt = 1; pids.swtpm === 0; attempt++) {
      if (opts.port === undefined) port = await freePortPair();
      try {
        pids.swtpm = await startSwtpmDaemon(dir, port);
      } catch (err) {
        if (opts.port !== undefined || attempt >= 5) throw err;
      }
    }
    track();

    // 2. its private bus.
    const bus = await startDbus(dir);
    pids.dbus = bus.pid;
    env.DBUS_SESSION_BUS_ADDRESS = bus.address;
    track();

    // 3. tpm2-abrmd on that bus (--allow-root only matters when we are root; --flush-all clears stale
    // transients), in its own session like the other two daemons.
    const abrmdLog = openSync(path.join(dir, 'abrmd.log'), 'a');
    const abrmd = spawn(
      'tpm2-abrmd',
      ['--session', '--allow-root', '--flush-all', `--tcti=swtpm:host=127.0.0.1,port=${port}`],
      {
        detached: true,
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

    // 5. swtpm's default dictionary-attack policy locks the TPM for ~17 min after 3 wrong PINs: relax it.
    await tpmRun(tpm, 'tpm2_dictionarylockout', [
      '--setup-parameters',
      '--max-tries=32',
      '--recovery-time=10',
      '--lockout-recovery-time=60',
    ]);

    await writeFile(
      path.join(dir, 'env'),
      Object.entries(env)
        .map(([k, v]) => `export ${k}=${shellQuote(v)}\n`)
        .join(''),
    );
    return { dir, port, env, pids };
  } catch (err) {
    const logs = logTails(dir);
    for (const pid of [pids.abrmd, pids.dbus, pids.swtpm]) await killAndWait(pid);
    opts.onPids?.([]);
    throw new Error(`TPM stack in ${dir}: ${errorText(err)}\n${logs}`, { cause: err });
  }
}
