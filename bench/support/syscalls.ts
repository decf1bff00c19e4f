/**
 * Optional syscall counting (--syscalls): `perf stat` on the syscall tracepoints of the proxy processes,
 * around one timed transfer. Counting tracepoints costs far less than strace and does not change the
 * proxy's batching, which is the thing being looked at (writes per MiB forwarded).
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export const COUNTED = [
  'read',
  'readv',
  'write',
  'writev',
  'sendmsg',
  'recvmsg',
  'epoll_wait',
  'epoll_pwait',
  'epoll_ctl',
] as const;

export type SyscallCounts = Record<string, number>;

/** Why syscalls cannot be counted here, or undefined when `perf stat` works on syscall tracepoints. */
export function syscallCountingUnavailable(): string | undefined {
  try {
    execFileSync('perf', ['stat', '-x', ',', '-e', 'syscalls:sys_enter_writev', '--', 'true'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 10_000,
    });
    return undefined;
  } catch (err) {
    return `perf stat with syscall tracepoints is not usable: ${(err as Error).message.split('\n')[0]}`;
  }
}

export type SyscallCounter = { stop(): Promise<SyscallCounts> };

export async function countSyscalls(pids: readonly number[], outFile: string): Promise<SyscallCounter> {
  const events = COUNTED.map((s) => `syscalls:sys_enter_${s}`).join(',');
  const child = spawn('perf', ['stat', '-x', ',', '-o', outFile, '-e', events, '-p', pids.join(',')], {
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.on('error', () => {});
  // perf needs a moment to attach to every thread.
  await sleep(150);
  return {
    async stop() {
      child.kill('SIGINT');
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
      const counts: SyscallCounts = {};
      try {
        for (const line of readFileSync(outFile, 'utf8').split('\n')) {
          const f = line.split(',');
          const m = /syscalls:sys_enter_(\w+)/.exec(f[2] ?? '');
          if (m?.[1] !== undefined && /^\d+$/.test(f[0] ?? '')) counts[m[1]] = Number(f[0]);
        }
      } finally {
        rmSync(outFile, { force: true });
      }
      return counts;
    },
  };
}
