// What /proc says about processes and sockets. A process is named by its pid and its start time (field 22
// of /proc/PID/stat), as the demo's PID files record it ("PID STARTTIME", demo/lib.sh), so a recycled pid is
// never taken for the process that was started.
import { readdirSync, readFileSync } from 'node:fs';

/** The start time of `pid` in clock ticks since boot; undefined when it is gone or a zombie. */
export function processStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
  return fields[19];
}

/** True while `pid` exists and is not a zombie. */
export function processAlive(pid: number): boolean {
  return processStartTime(pid) !== undefined;
}

/** Live processes (other than this one) whose command line mentions `needle`, as "PID: command line". */
export function processesMentioning(needle: string): string[] {
  const hits: string[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes(needle) && processAlive(Number(name))) hits.push(`${name}: ${cmd.trim()}`);
    } catch {
      // exited meanwhile
    }
  }
  return hits;
}

/** Local TCP ports with a socket in LISTEN state (IPv4 and IPv6), from /proc/net/tcp*. */
export function listeningPorts(): Set<number> {
  const ports = new Set<number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && f[1] !== undefined) ports.add(Number.parseInt(f[1].split(':')[1] ?? '', 16));
    }
  }
  return ports;
}
