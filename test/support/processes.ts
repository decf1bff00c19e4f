// Spawn real programs for tests, capture their output line by line, wait for log lines, stop them.
// Every process spawned here is SIGKILLed when the test process dies, whatever happened in between
// (see reapOnExit: a detached watchdog, because vitest kills its workers with signals).
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { reapOnExit } from '../../dev-support/reap-on-exit.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { type ExitInfo, exitCodeOf } from '../../dev-support/run-command.js';

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
