/**
 * A software TPM for bench line (d), the recipe of test/support/swtpm.ts (which the build does not compile):
 * swtpm on 127.0.0.1 behind tpm2-abrmd on a private session D-Bus, in a temp state dir, all stopped by pid.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './net.js';

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

export type BenchTpm = {
  readonly dir: string;
  /** Environment for tpm2-tools, tpm2-pkcs11 and the sidecar. */
  readonly env: Record<string, string>;
  readonly pids: readonly number[];
  stop(): Promise<void>;
};

export const TABRMD_TCTI = 'tabrmd:bus_type=session';

function findLib(rel: string): string {
  const roots = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu'];
  for (const d of existsSync('/usr/lib') ? readdirSync('/usr/lib') : []) {
    if (d.endsWith('-linux-gnu')) roots.push(path.join('/usr/lib', d));
  }
  for (const r of roots) if (existsSync(path.join(r, rel))) return path.join(r, rel);
  throw new Error(`${rel} not found (install libtpm2-pkcs11-1 libengine-pkcs11-openssl)`);
}

/** Why line (d) cannot run here, or undefined when every tool is installed. */
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
    return (err as Error).message;
  }
  return undefined;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

async function killAndWait(pid: number): Promise<void> {
  if (!(pid > 0) || !alive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(25);
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

async function readPid(file: string): Promise<number> {
  for (let i = 0; i < 250; i++) {
    try {
      const pid = Number((await readFile(file, 'utf8')).trim());
      if (pid > 0) return pid;
    } catch {
      // not yet
    }
    await sleep(20);
  }
  throw new Error(`no pid in ${file}`);
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: 127, out: err.message });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, out });
    });
  });
}

export async function startBenchTpm(): Promise<BenchTpm> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-bench-tpm-'));
  await mkdir(path.join(dir, 'tpmstate'));
  await mkdir(path.join(dir, 'store'));
  const pids: number[] = [];
  const stopAll = () => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stopAll);
  const stop = async () => {
    process.removeListener('exit', stopAll);
    for (const pid of [...pids].reverse()) await killAndWait(pid);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    let port = 0;
    let lastError = '';
    for (let attempt = 0; attempt < 8 && pids.length === 0; attempt++) {
      port = await freePort();
      // swtpm's control port is port + 1: it must be free too.
      if (port >= 65535 || !(await portFree(port + 1))) continue;
      const r = await run(
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
        process.env,
      );
      if (r.code === 0) pids.push(await readPid(path.join(dir, 'swtpm.pid')));
      else lastError = r.out.trim().split('\n').slice(-3).join(' | ');
    }
    if (pids.length === 0) throw new Error(`swtpm did not start: ${lastError || 'no free port pair'}`);

    const addrFile = path.join(dir, 'dbus.addr');
    const pidFile = path.join(dir, 'dbus.pid');
    const fds = [
      openSync(path.join(dir, 'dbus.log'), 'a'),
      openSync(addrFile, 'w'),
      openSync(pidFile, 'w'),
    ] as const;
    try {
      await new Promise<void>((resolve, reject) => {
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
        child.once('exit', (c) => (c === 0 ? resolve() : reject(new Error(`dbus-daemon exited ${c}`))));
      });
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    pids.push(await readPid(pidFile));
    const bus = (await readFile(addrFile, 'utf8')).split('\n')[0]?.trim() ?? '';
    const env: Record<string, string> = {
      DBUS_SESSION_BUS_ADDRESS: bus,
      TPM2TOOLS_TCTI: TABRMD_TCTI,
      TPM2_PKCS11_TCTI: TABRMD_TCTI,
      TPM2_PKCS11_STORE: path.join(dir, 'store'),
      PKCS11_MODULE_PATH: findLib('pkcs11/libtpm2_pkcs11.so'),
      TPM2_PKCS11_MODULE: findLib('pkcs11/libtpm2_pkcs11.so'),
      OPENSSL_ENGINES: path.dirname(findLib('engines-3/pkcs11.so')),
    };
    const log = openSync(path.join(dir, 'abrmd.log'), 'a');
    const abrmd = spawn(
      'tpm2-abrmd',
      ['--session', '--allow-root', '--flush-all', `--tcti=swtpm:host=127.0.0.1,port=${port}`],
      {
        stdio: ['ignore', log, log],
        env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: bus },
      },
    );
    closeSync(log);
    abrmd.on('error', () => {});
    abrmd.unref();
    if (abrmd.pid === undefined) throw new Error('tpm2-abrmd did not spawn');
    pids.push(abrmd.pid);

    const full = { ...process.env, ...env };
    for (let i = 0; ; i++) {
      if ((await run('tpm2_getcap', ['properties-fixed'], full)).code === 0) break;
      if (i > 100) throw new Error('TPM not reachable through abrmd');
      await sleep(200);
    }
    const da = await run(
      'tpm2_dictionarylockout',
      ['--setup-parameters', '--max-tries=32', '--recovery-time=10', '--lockout-recovery-time=60'],
      full,
    );
    if (da.code !== 0) throw new Error(`tpm2_dictionarylockout: ${da.out}`);
    return { dir, env, pids, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
