// Clean-up that survives the process dying by a signal. vitest ends its fork workers with SIGTERM (then
// SIGKILL) and an interrupted benchmark gets SIGINT, so 'exit' handlers cannot be relied on. Instead, one
// detached watchdog per process reads registrations on its stdin; when that pipe reaches EOF (this process
// died, however it died) it signals what is still registered, waits up to 5 s, SIGKILLs leftovers and removes
// the registered dirs. Normal clean-up releases its registration first.
import { type ChildProcess, spawn } from 'node:child_process';

const REAPER_SCRIPT = `
declare -A SIG PIDS DIRS
while read -r op id rest; do
  case "$op" in
    sig) SIG[$id]="$rest" ;;
    pids) PIDS[$id]="$rest" ;;
    dir) DIRS[$id]="$rest" ;;
    rm) unset "SIG[$id]" "PIDS[$id]" "DIRS[$id]" ;;
  esac
done
all=""
for id in "\${!PIDS[@]}"; do
  for p in \${PIDS[$id]}; do kill -s "\${SIG[$id]:-TERM}" "$p" 2>/dev/null && all="$all $p"; done
done
alive=""
for _ in $(seq 50); do
  alive=""
  for p in $all; do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=\${s##*) }
    [ "\${s:0:1}" = Z ] || alive="$alive $p"
  done
  [ -z "$alive" ] && break
  sleep 0.1
done
for p in $alive; do kill -s KILL "$p" 2>/dev/null; done
for id in "\${!DIRS[@]}"; do rm -rf -- "\${DIRS[$id]}"; done
`;

let reaper: ChildProcess | null = null;
let nextReaperId = 0;

function reaperSend(line: string): void {
  if (reaper === null) {
    reaper = spawn('bash', ['-c', REAPER_SCRIPT], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
    reaper.on('error', () => {});
    reaper.stdin?.on('error', () => {});
    reaper.unref();
    // The write end must not keep this process alive either.
    (reaper.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  }
  reaper.stdin?.write(`${line}\n`);
}

export interface Reaper {
  /** Replace the pids to signal if this process dies (e.g. after a restart, or [] once stopped). */
  setPids(pids: readonly number[]): void;
  /** Forget everything (the resource was cleaned up normally). */
  release(): void;
}

/**
 * Make sure `pids` get `signal` (SIGKILL after 5 s) and `dir` is removed if this process dies without
 * cleaning up. Only pids this process started should ever be registered.
 */
export function reapOnExit(opts: {
  pids?: readonly number[];
  signal?: NodeJS.Signals;
  dir?: string;
}): Reaper {
  const id = ++nextReaperId;
  let released = false;
  reaperSend(`sig ${id} ${(opts.signal ?? 'SIGTERM').replace(/^SIG/, '')}`);
  if (opts.dir) reaperSend(`dir ${id} ${opts.dir.replace(/\n/g, '')}`);
  const setPids = (pids: readonly number[]) => {
    if (!released) reaperSend(`pids ${id} ${pids.filter((p) => Number.isInteger(p) && p > 0).join(' ')}`);
  };
  setPids(opts.pids ?? []);
  return {
    setPids,
    release() {
      if (released) return;
      released = true;
      reaperSend(`rm ${id}`);
    },
  };
}
