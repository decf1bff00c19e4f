// Run a program to completion and collect its output.
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { errorText } from '../core/error-text.js';
import { repoRoot } from './repo-root.js';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The exit code, or 128 + signal number when the process died from a signal (shell style). */
export function exitCodeOf(info: ExitInfo): number {
  if (info.code !== null) return info.code;
  const n = info.signal ? constants.signals[info.signal] : undefined;
  return 128 + (n ?? 0);
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a command (cwd: the repository root by default). Rejects only if `check` is set and it fails. */
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
      reject(new Error(`${command}: ${errorText(e)}`));
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
