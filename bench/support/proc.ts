/**
 * /proc readings for the processes under test: CPU time (utime + stime), RSS and open fds, summed over a
 * process and all its descendants (the gateway may run node:cluster workers). Linux only.
 */

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let clockTicks = 0;

/** Kernel clock ticks per second (USER_HZ), for utime/stime in /proc/<pid>/stat. */
export function ticksPerSecond(): number {
  if (clockTicks === 0) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

type StatFields = { ppid: number; utime: number; stime: number };

function readStat(pid: number): StatFields | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm may contain spaces and parentheses: fields start after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] = state (field 3), so field N is rest[N - 3].
  return { ppid: Number(rest[1]), utime: Number(rest[11]), stime: Number(rest[12]) };
}

/** `pid` and every live descendant. */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(Number(name));
    if (st === undefined) continue;
    const list = children.get(st.ppid);
    if (list === undefined) children.set(st.ppid, [Number(name)]);
    else list.push(Number(name));
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift() as number;
    if (readStat(p) === undefined) continue;
    out.push(p);
    queue.push(...(children.get(p) ?? []));
  }
  return out;
}

/** CPU seconds (user + system) consumed so far by the given pids (not their children: list them). */
export function cpuSeconds(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const st = readStat(pid);
    if (st !== undefined) ticks += st.utime + st.stime;
  }
  return ticks / ticksPerSecond();
}

/** VmRSS in bytes, summed. */
export function rssBytes(pids: readonly number[]): number {
  let total = 0;
  for (const pid of pids) {
    try {
      const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) total += Number(m[1]) * 1024;
    } catch {
      // gone
    }
  }
  return total;
}

/** Open file descriptors, summed. */
export function fdCount(pids: readonly number[]): number {
  let total = 0;
  for (const pid of pids) {
    try {
      total += readdirSync(`/proc/${pid}/fd`).length;
    } catch {
      // gone
    }
  }
  return total;
}

export function machineDescription(): { nproc: number; cpuModel: string; memGiB: number; kernel: string } {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const models = [...cpuinfo.matchAll(/^model name\s*:\s*(.*)$/gm)].map((m) => m[1]?.trim() ?? '');
  const mem = /^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  let kernel = '';
  try {
    kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    // unknown
  }
  return {
    nproc: models.length || 1,
    cpuModel: models[0] ?? 'unknown',
    memGiB: mem ? Math.round(Number(mem[1]) / 1024 / 1024) : 0,
    kernel,
  };
}

/**
 * CPU-seconds the whole machine spent busy so far (all cores; /proc/stat: everything but idle and iowait).
 * Without CONFIG_IRQ_TIME_ACCOUNTING (the usual case) softirq ticks are also charged to the interrupted
 * process, so the bench's own loopback traffic shows up in its processes' stime, not as "other load".
 */
export function machineBusySeconds(): number {
  const first = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const f = first.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
  return busy / ticksPerSecond();
}

/** One process's memory as the kernel counts it, in bytes (`/proc/<pid>/status` and `smaps_rollup`). */
export type MemoryReading = {
  /** Resident now (anonymous + file-backed + shmem). */
  readonly rss: number;
  /** Peak resident since start. */
  readonly hwm: number;
  /** Resident anonymous pages: heap, stacks, malloc arenas; private to the process. */
  readonly anon: number;
  /** Resident file-backed pages: the node binary and shared libraries, shared with other processes. */
  readonly file: number;
  /** Proportional set size: file pages divided among the processes mapping them (0 if unreadable). */
  readonly pss: number;
  /** Unique set size (Private_Clean + Private_Dirty): what the kernel gets back when the process exits. */
  readonly uss: number;
};

export function memoryOf(pid: number): MemoryReading | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const kib = (text: string, field: string) =>
    Number(new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  let pss = 0;
  let uss = 0;
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    pss = kib(rollup, 'Pss');
    uss = kib(rollup, 'Private_Clean') + kib(rollup, 'Private_Dirty');
  } catch {
    // older kernel or no permission
  }
  return {
    rss: kib(status, 'VmRSS'),
    hwm: kib(status, 'VmHWM'),
    anon: kib(status, 'RssAnon'),
    file: kib(status, 'RssFile'),
    pss,
    uss,
  };
}
