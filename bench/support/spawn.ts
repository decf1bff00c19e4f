/**
 * Processes of one bench run: output to a log file (never a pipe the orchestrator must read, which would
 * cost CPU during measurements), stopped by pid, SIGKILLed if the run exits first.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export type Managed = {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  readonly logFile: string;
  alive(): boolean;
  /** SIGTERM, then SIGKILL after timeoutMs. */
  stop(timeoutMs?: number): Promise<void>;
  tail(lines?: number): string;
};

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) {
    try {
      c.kill('SIGKILL');
    } catch {
      // gone
    }
  }
});

export function spawnLogged(
  name: string,
  command: string,
  args: readonly string[],
  logFile: string,
  env: NodeJS.ProcessEnv = process.env,
): Managed {
  const fd = openSync(logFile, 'a');
  const child = spawn(command, [...args], { stdio: ['ignore', fd, fd], env });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`${name}: spawn ${command} failed`);
  live.add(child);
  let exited = child.exitCode !== null;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      live.delete(child);
      resolve();
    });
  });
  child.on('error', () => {});
  const tail = (lines = 30) => {
    try {
      return readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  };
  return {
    name,
    pid: child.pid,
    child,
    logFile,
    alive: () => !exited,
    tail,
    async stop(timeoutMs = 5000) {
      if (exited) return;
      child.kill('SIGTERM');
      const killed = await Promise.race([exit.then(() => true), sleep(timeoutMs).then(() => false)]);
      if (!killed) {
        child.kill('SIGKILL');
        await Promise.race([exit, sleep(2000)]);
      }
    },
  };
}

/**
 * The node flags an entry point's `#!/usr/bin/env -S node …` line passes: the gateway and the sidecar are
 * measured as `agent_gateway` and `agent_gateway_sidecar` run, not as a bare `node main.js` would.
 */
export function interpreterFlags(script: string): string[] {
  const first = readFileSync(script, 'utf8').split('\n', 1)[0] ?? '';
  return /^#!\/usr\/bin\/env -S node (.+)$/.exec(first)?.[1]?.split(' ').filter(Boolean) ?? [];
}
