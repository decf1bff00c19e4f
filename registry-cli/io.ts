import type { Env } from './env.js';

/** Where a command writes: stdout for results, stderr for warnings. Tests pass their own. */
export type Io = {
  out(text: string): void;
  err(text: string): void;
};

export type CommandContext = {
  readonly env: Env;
  readonly io: Io;
};

export const processIo: Io = {
  out: (text) => process.stdout.write(text.endsWith('\n') ? text : `${text}\n`),
  err: (text) => process.stderr.write(text.endsWith('\n') ? text : `${text}\n`),
};
