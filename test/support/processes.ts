// Spawn real programs for tests, capture their output line by line, wait for log lines, stop them.
// Every process spawned here is SIGKILLed when the test process dies, whatever happened in between
// (see reapOnExit: a detached watchdog, because vitest kills its workers with signals).
import { type ChildProcess, spawn } from 'node:child_process';
import { constants } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** Repository root (this file lives in <root>/test/support/). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface LogLine {
  stream: 'stdout' | 'stderr';
  text: string;
  /** The parsed line when it is a JSON object (pino and friends). */
  json?: Record<string, unknown>;
  /** Date.now() when the line was read. */
  at: number;
}

export type LogPredicate = ((line: LogLine) => boolean) | string | RegExp;

export interface SpawnOptions {
  /** Extra environment; merged over process.env unless `inheritEnv` is false. `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  inheritEnv?: boolean;
  /** Defaults to the repository root. */
  cwd?: string;
  /** Name used in error messages; defaults to the program's basename. */
  name?: string;
  /** Data written to stdin, which is then closed. Default: stdin is closed immediately. */
  stdin?: string | Buffer;
  /** Also print every line to the test's stderr (or set TEST_ECHO_LOGS=1). */
  echo?: boolean;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Every line seen so far, both streams, in arrival order. */
  readonly lines: LogLine[];
  /** Resolves when the process has exited and both output streams are drained. */
  readonly exited: Promise<ExitInfo>;
  /** Exit information once the process has exited, else null. */
  exitInfo(): ExitInfo | null;
  /** Resolve with the first line (already seen or future) matching `predicate`; reject on timeout or exit. */
  waitForLog(predicate: LogPredicate, timeoutMs?: number): Promise<LogLine>;
  /**
   * Send `signal` (default SIGTERM), SIGKILL after `timeoutMs`, and resolve with the exit code
   * (128 + signal number when the process died from a signal, shell style). Safe to call twice.
   */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number>;
  /** The last `n` lines as text, for error messages. */
  tail(n?: number): string;
}

// ---- reaper -------------------------------------------------------------------------------------------
// vitest ends its fork workers with SIGTERM (then SIGKILL), so 'exit' handlers never run there. Instead, one
// detached watchdog per test process reads registrations on its stdin; when that pipe reaches EOF (this
// process died, however it died) it signals what is still registered, waits up to 5 s, SIGKILLs leftovers and
// removes the registered dirs. Normal stop()/destroy() release their registration first.
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
 * cleaning up. Only pids this test process started should ever be registered.
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

function matches(predicate: LogPredicate, line: LogLine): boolean {
  if (typeof predicate === 'function') return predicate(line);
  if (typeof predicate === 'string') return line.text.includes(predicate);
  return predicate.test(line.text);
}

function parseJsonLine(text: string): Record<string, unknown> | undefined {
  const t = text.trim();
  if (!t.startsWith('{')) return undefined;
  try {
    const v: unknown = JSON.parse(t);
    return v !== null && typeof v === 'object' && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

export function exitCodeOf(info: ExitInfo): number {
  if (info.code !== null) return info.code;
  const n = info.signal ? constants.signals[info.signal] : undefined;
  return 128 + (n ?? 0);
}

function buildEnv(opts: SpawnOptions): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = opts.inheritEnv === false ? {} : { ...process.env };
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Spawn any program with captured output. */
export function spawnProcess(
  command: string,
  args: readonly string[],
  opts: SpawnOptions = {},
): ManagedProcess {
  const name = opts.name ?? path.basename(command);
  const echo = opts.echo ?? process.env['TEST_ECHO_LOGS'] === '1';
  const child = spawn(command, [...args], {
    cwd: opts.cwd ?? repoRoot,
    env: buildEnv(opts),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const reaped = reapOnExit({ pids: child.pid ? [child.pid] : [], signal: 'SIGKILL' });
  const lines: LogLine[] = [];
  const waiters = new Set<{ predicate: LogPredicate; resolve: (l: LogLine) => void }>();
  let info: ExitInfo | null = null;

  const onLine = (stream: 'stdout' | 'stderr') => (text: string) => {
    const line: LogLine = { stream, text, at: Date.now() };
    const json = parseJsonLine(text);
    if (json) line.json = json;
    lines.push(line);
    if (echo) process.stderr.write(`[${name}:${stream}] ${text}\n`);
    for (const w of waiters) {
      let ok = false;
      try {
        ok = matches(w.predicate, line);
      } catch {
        ok = false;
      }
      if (ok) {
        waiters.delete(w);
        w.resolve(line);
      }
    }
  };
  const drained: Promise<void>[] = [];
  for (const stream of ['stdout', 'stderr'] as const) {
    const s = child[stream];
    if (!s) continue;
    const rl = createInterface({ input: s, crlfDelay: Number.POSITIVE_INFINITY });
    rl.on('line', onLine(stream));
    drained.push(new Promise((r) => rl.once('close', () => r())));
  }
  if (child.stdin) {
    child.stdin.on('error', () => {});
    child.stdin.end(opts.stdin);
  }

  const exited = new Promise<ExitInfo>((resolve) => {
    let settled = false;
    const finish = (i: ExitInfo) => {
      if (settled) return;
      settled = true;
      reaped.release();
      // Give the readline interfaces a moment to flush the last lines (a grandchild may hold the pipes).
      const timer = setTimeout(() => done(), 2000);
      const done = () => {
        clearTimeout(timer);
        info = i;
        resolve(i);
      };
      Promise.all(drained).then(done, done);
    };
    child.once('exit', (code, signal) => finish({ code, signal }));
    child.once('error', (err) => {
      lines.push({ stream: 'stderr', text: `spawn error: ${err.message}`, at: Date.now() });
      if (child.exitCode === null && child.signalCode === null) finish({ code: 127, signal: null });
    });
  });

  const tail = (n = 40) =>
    lines
      .slice(-n)
      .map((l) => `[${l.stream}] ${l.text}`)
      .join('\n');

  const waitForLog = (predicate: LogPredicate, timeoutMs = 15_000): Promise<LogLine> => {
    for (const l of lines) if (matches(predicate, l)) return Promise.resolve(l);
    return new Promise<LogLine>((resolve, reject) => {
      const waiter = {
        predicate,
        resolve: (l: LogLine) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(
          new Error(`${name}: no log line matching ${String(predicate)} within ${timeoutMs} ms\n${tail()}`),
        );
      }, timeoutMs);
      waiters.add(waiter);
      exited.then((i) => {
        if (!waiters.has(waiter)) return;
        waiters.delete(waiter);
        clearTimeout(timer);
        reject(
          new Error(
            `${name} exited (code ${i.code}, signal ${i.signal}) before a log line matching ${String(predicate)}\n${tail()}`,
          ),
        );
      });
    });
  };

  const stop = async (signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<number> => {
    if (info === null && child.exitCode === null && child.signalCode === null) {
      try {
        child.kill(signal);
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          child.kill('SIGKILL');
        } catch {
          // already gone
        }
      }, timeoutMs);
      await exited;
      clearTimeout(timer);
    }
    return exitCodeOf(await exited);
  };

  return {
    name,
    pid: child.pid ?? -1,
    child,
    lines,
    exited,
    exitInfo: () => info,
    waitForLog,
    stop,
    tail,
  };
}

/** Spawn `node script ...args` (relative script paths are resolved against the repository root). */
export function spawnNode(
  script: string,
  args: readonly string[] = [],
  opts: SpawnOptions = {},
): ManagedProcess {
  const abs = path.resolve(repoRoot, script);
  return spawnProcess(process.execPath, [abs, ...args], { name: path.basename(script), ...opts });
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a command to completion and collect its output. Rejects only if `check` is set and it fails. */
export function runCommand(
  command: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; check?: boolean; input?: string; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args], {
      cwd: opts.cwd ?? repoRoot,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr?.on('data', (d: Buffer) => err.push(d));
    child.stdin?.on('error', () => {});
    child.stdin?.end(opts.input);
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            err.push(Buffer.from(`\n[killed after ${opts.timeoutMs} ms]`));
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${command}: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const result: CommandResult = {
        code: exitCodeOf({ code, signal }),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      };
      if (opts.check && result.code !== 0) {
        reject(
          new Error(
            `${command} ${args.join(' ')} exited ${result.code}\n${(result.stderr + result.stdout).trim().slice(-4000)}`,
          ),
        );
      } else {
        resolve(result);
      }
    });
  });
}
