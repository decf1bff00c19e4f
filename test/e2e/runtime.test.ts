// Which Node runs the programs under test. test/run.sh runs the suite once per supported runtime (README
// "Tests"); a run only says something about a runtime if the gateway it starts runs on that runtime too,
// both as the tests start it (process.execPath) and as an operator does (the entry point's
// `#!/usr/bin/env -S node <V8 flags>` line, resolved through PATH).
import { readFile, realpath } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { runCommand } from '../../dev-support/run-command.js';
import { GATEWAY_MAIN, type GatewayProcess, startGatewayProcess } from '../support/gateway.js';
import { spawnProcess } from '../support/processes.js';

const adminUrl = inject('pgAdminUrl');

/** The `version` label of prom-client's default `nodejs_version_info` series on the gateway's /metrics. */
async function gatewayNodeVersion(adminPort: number): Promise<string | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  return /^nodejs_version_info\{[^}]*version="([^"]+)"/m.exec(text)?.[1];
}

/** The V8 flags an entry point's `#!/usr/bin/env -S node ...` line passes. */
async function shebangFlags(file: string): Promise<string[]> {
  const first = (await readFile(file, 'utf8')).split('\n', 1)[0] ?? '';
  const m = /^#!\/usr\/bin\/env -S node((?: --[\w-]+=\d+)*)$/.exec(first);
  if (!m) throw new Error(`${file}: unexpected interpreter line ${JSON.stringify(first)}`);
  return m[1]!.trim().split(' ').filter(Boolean);
}

describe('the runtime under test', () => {
  let db: string;
  let gw: GatewayProcess | undefined;

  beforeAll(async () => {
    db = await createMigratedDatabase(adminUrl, 'runtime_check');
  });
  afterAll(async () => {
    await gw?.cleanup();
    await dropDatabase(adminUrl, db);
  });

  it('is the Node test/run.sh selected, and the one `node` on PATH resolves to', async () => {
    const expected = process.env['AGW_TEST_NODE_VERSION'];
    if (expected !== undefined) expect(process.version).toBe(expected);
    const onPath = await runCommand('node', ['-p', 'process.execPath'], { check: true });
    expect(await realpath(onPath.stdout.trim())).toBe(await realpath(process.execPath));
    console.log(`runtime under test: Node ${process.version} (${process.execPath})`);
  });

  it('runs a gateway the tests start, by the same binary', async () => {
    gw = await startGatewayProcess({ databaseUrl: db });
    const version = await gatewayNodeVersion(gw.adminPort!);
    console.log(`gateway pid ${gw.proc.pid} reports Node ${version}`);
    expect(version).toBe(process.version);
    expect(await realpath(`/proc/${gw.proc.pid}/exe`)).toBe(await realpath(process.execPath));
  });

  it('runs a gateway started through its #! line, by the same binary with the V8 heap flags', async () => {
    if (gw === undefined) gw = await startGatewayProcess({ databaseUrl: db });
    const { configPath, adminPort } = gw;
    expect(await gw.stop()).toBe(0);
    const flags = await shebangFlags(GATEWAY_MAIN);
    expect(flags.length).toBeGreaterThan(0);
    const direct = spawnProcess(GATEWAY_MAIN, ['--config', configPath], {
      name: 'gateway-exec',
      env: { AGENT_GATEWAY_LOG_STDOUT: undefined },
    });
    try {
      await direct.waitForLog((l) => l.json?.['msg'] === 'gateway listening', 30_000);
      expect(await gatewayNodeVersion(adminPort!)).toBe(process.version);
      expect(await realpath(`/proc/${direct.pid}/exe`)).toBe(await realpath(process.execPath));
      const argv = (await readFile(`/proc/${direct.pid}/cmdline`, 'utf8')).split('\0');
      expect(argv.slice(1, 1 + flags.length)).toEqual(flags);
      expect(argv[1 + flags.length]).toBe(GATEWAY_MAIN);
    } finally {
      expect(await direct.stop('SIGTERM', 20_000)).toBe(0);
    }
  });
});
