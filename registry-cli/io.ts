import { createInterface } from 'node:readline';
import type { Env } from './env.js';

/** Where a command writes: stdout for results, stderr for warnings. Tests pass their own. */
export type Io = {
  out(text: string): void;
  err(text: string): void;
  /** Ask a yes/no question; only "y" or "yes" is yes, end of input (or no way to ask) is no. */
  confirm?(question: string): Promise<boolean>;
};

export type CommandContext = {
  readonly env: Env;
  readonly io: Io;
};

export const processIo: Io = {
  confirm: async (question) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try {
      const answer = await new Promise<string>((resolve) => {
        rl.once('close', () => resolve(''));
        rl.question(question, resolve);
      });
      return /^(y|yes)$/i.test(answer.trim());
    } finally {
      rl.close();
    }
  },
  out: (text) => process.stdout.write(text.endsWith('\n') ? text : `${text}\n`),
  err: (text) => process.stderr.write(text.endsWith('\n') ? text : `${text}\n`),
};
