import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Real processes, real ports, one TPM simulator per suite: keep parallelism modest on 2 cores.
    maxWorkers: 2,
    fileParallelism: true,
  },
});
