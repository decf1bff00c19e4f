// The unit tests alone, for Stryker (npm run mutate; README "Mutation testing"): no globalSetup, so no
// PostgreSQL is started; test/e2e needs real processes and is not part of a mutation run.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
    // The only unit file that needs the shared PostgreSQL cluster (inject('pgAdminUrl')).
    exclude: ['test/unit/support.test.ts'],
    testTimeout: 60_000,
  },
});
