// The demo, end to end, as a new user runs it (demo/demo.sh, demo/demo-agent.sh), isolated in a temp dir
// with free ports: setup proves one request through a TPM-backed tunnel; a second agent with a narrower
// grant is denied where the first is allowed; a deleted agent's permissions are revoked and a new key under
// the same identity is denied; teardown leaves no process, port or file behind.
import { existsSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listeningPorts, processesMentioning, processStartTime } from '../../dev-support/proc.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import {
  createDemoRun,
  type DemoRun,
  explain,
  MINUTE,
  type RecordedProcess,
  readStateFile,
  recordedProcesses,
} from '../support/demo-run.js';

let demo: DemoRun;
let tmp = '';
let stateDir = '';
/** Ports handed to the demo; each must be free again after teardown. */
let ports: Record<string, number> = {};
const run: DemoRun['run'] = (...a) => demo.run(...a);
const demoEnv: DemoRun['env'] = (extra) => demo.env(extra);

describe('demo: one command to an agent fetching through a TPM-backed tunnel', () => {
  let processes: RecordedProcess[] = [];
  let pgDir = '';
  let alphaSpki = '';

  beforeAll(async () => {
    demo = await createDemoRun('agw-demo-e2e-');
    ({ tmp, stateDir, ports } = demo);
  });

  afterAll(async () => {
    if (demo !== undefined) await demo.cleanUp();
  }, 3 * MINUTE);

  it(
    'setup starts everything and proves GET https://docstore/health through agent-alpha',
    async () => {
      const r = await run('demo.sh', ['setup'], 8 * MINUTE);
      expect(r.code, explain(r)).toBe(0);
      expect(JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '')).toEqual({
        status: 'ok',
        service: 'docstore',
      });
      for (let i = 1; i <= 14; i++) expect(r.stderr).toContain(`==> [${i}/14]`);

      const state = readStateFile(path.join(stateDir, 'demo.env'));
      expect(state['GATEWAY_PORT']).toBe(String(ports['GATEWAY']));
      expect(state['CONFIG_WRITTEN']).toBe('1');
      pgDir = state['PG_DIR'] ?? '';
      expect(pgDir).not.toBe('');
      const agent = readStateFile(path.join(stateDir, 'demo-agents', 'agent-alpha', 'agent.env'));
      expect(agent['IDENTITY']).toBe('agent-alpha');
      expect(agent['TPM_HANDLE']).toBe('0x81010004');
      expect(agent['SWTPM_PORT']).toBe(String(ports['SWTPM']));
      expect(agent['SIDECAR_PORT']).toBe(String(ports['SIDECAR']));
      // The mock CA stays out of the gateway's and the demo's global environment: config points at files.
      const config = readFileSync(path.join(tmp, 'config.toml'), 'utf8');
      expect(config).toMatch(/"docstore:443" = "127\.0\.0\.1:\d+"/);
      alphaSpki = path.join(tmp, 'agent-alpha.spki.der');
      await runCommand('cp', [path.join(stateDir, 'demo-agents', 'agent-alpha', 'spki.der'), alphaSpki], {
        check: true,
      });
    },
    9 * MINUTE,
  );

  it(
    're-running setup reuses what runs',
    async () => {
      const before = recordedProcesses(stateDir)
        .map((p) => `${path.relative(stateDir, p.file)}=${p.pid}`)
        .sort();
      const r = await run('demo.sh', ['setup'], 5 * MINUTE);
      expect(r.code, explain(r)).toBe(0);
      expect(r.stderr).toContain('already running');
      const after = recordedProcesses(stateDir)
        .map((p) => `${path.relative(stateDir, p.file)}=${p.pid}`)
        .sort();
      expect(after).toEqual(before);
    },
    6 * MINUTE,
  );

  it(
    'agent-alpha fetches https://docstore/documents with a prompt',
    async () => {
      const r = await run('demo-agent.sh', [
        'prompt',
        'agent-alpha',
        '--prompt',
        'Access https://docstore/documents using curl',
      ]);
      expect(r.code, explain(r)).toBe(0);
      expect(r.stdout).toContain('"documents":[');
      expect(r.stdout).toContain('Quarterly plan');
    },
    3 * MINUTE,
  );

  it(
    "agent-alpha's sidecar answers 407 without its token, which stays in one 0600 file",
    async () => {
      const agentDir = path.join(stateDir, 'demo-agents', 'agent-alpha');
      const tokenFile = path.join(agentDir, 'proxy.token');
      expect(statSync(tokenFile).mode & 0o777).toBe(0o600);
      const token = readFileSync(tokenFile, 'utf8').trim();
      const bare = await runCommand(
        'curl',
        [
          '-sS',
          '--max-time',
          '20',
          '-x',
          `http://127.0.0.1:${ports['SIDECAR']}`,
          '-o',
          '/dev/null',
          '-w',
          '%{http_connect}',
          'https://docstore/health',
        ],
        { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, timeoutMs: 30_000 },
      );
      expect(bare.stdout).toBe('407');
      // In no log, state or config file of the demo.
      const files = readdirSync(stateDir, { recursive: true, encoding: 'utf8' })
        .filter((f) => /\.(log|env|toml|json)$/.test(f))
        .map((f) => path.join(stateDir, f));
      expect(files.some((f) => f.endsWith('sidecar.log'))).toBe(true);
      for (const file of files) {
        if (lstatSync(file).isFile()) expect(readFileSync(file).includes(token), file).toBe(false);
      }
    },
    MINUTE,
  );

  it(
    'agent-beta, granted only messaging, is denied docstore (403) while agent-alpha is allowed',
    async () => {
      const created = await run('demo-agent.sh', [
        'create',
        '--identity',
        'agent-beta',
        '--grant',
        'messaging',
      ]);
      expect(created.code, explain(created)).toBe(0);
      expect(created.stdout.trim()).toBe('agent-beta');
      // Its own swtpm and sidecar: agent-alpha holds the requested ports, so free ones were chosen.
      const beta = readStateFile(path.join(stateDir, 'demo-agents', 'agent-beta', 'agent.env'));
      expect(beta['SWTPM_PORT']).not.toBe(String(ports['SWTPM']));
      expect(beta['SIDECAR_PORT']).not.toBe(String(ports['SIDECAR']));

      const denied = await run('demo-agent.sh', [
        'prompt',
        'agent-beta',
        '--prompt',
        'Get https://docstore/documents',
      ]);
      expect(denied.code, explain(denied)).not.toBe(0);
      expect(denied.stderr).toContain('CONNECT tunnel failed, response 403');
      expect(denied.stdout).not.toContain('"documents"');

      const allowed = await run('demo-agent.sh', [
        'prompt',
        'agent-beta',
        '--prompt',
        'Get https://messaging/messages',
      ]);
      expect(allowed.code, explain(allowed)).toBe(0);
      expect(allowed.stdout).toContain('"messages":[');

      const alpha = await run('demo-agent.sh', [
        'prompt',
        'agent-alpha',
        '--prompt',
        'Get https://docstore/health',
      ]);
      expect(alpha.code, explain(alpha)).toBe(0);
      expect(alpha.stdout).toContain('{"status":"ok","service":"docstore"}');

      const gatewayLog = readFileSync(path.join(stateDir, 'logs', 'gateway.log'), 'utf8');
      expect(gatewayLog).toMatch(/"source_identity":"agent-beta".*"CONNECT denied"/);
      expect(gatewayLog).toMatch(/"source_identity":"agent-alpha".*"CONNECT allowed"/);
    },
    5 * MINUTE,
  );

  it(
    'deleting agent-alpha revokes its permissions: its next request is denied',
    async () => {
      const del = await run('demo-agent.sh', ['delete', 'agent-alpha']);
      expect(del.code, explain(del)).toBe(0);
      expect(existsSync(path.join(stateDir, 'demo-agents', 'agent-alpha'))).toBe(false);

      // The registry, by the gateway's own policy code, now denies the deleted key.
      const state = readStateFile(path.join(stateDir, 'demo.env'));
      const check = await runCommand(
        path.join(repoRoot, 'registry-cli', 'agent-permissions.sh'),
        ['check', 'agent-alpha', alphaSpki, 'docstore'],
        { env: demoEnv({ AGENT_GATEWAY_DATABASE_URL: state['DB_ADMIN_URL'] ?? '' }), timeoutMs: MINUTE },
      );
      expect(check.code, explain(check)).toBe(1);
      expect(check.stdout + check.stderr).toMatch(/revoked/);

      // The handle is gone...
      const gone = await run('demo-agent.sh', [
        'prompt',
        'agent-alpha',
        '--prompt',
        'Get https://docstore/health',
      ]);
      expect(gone.code).not.toBe(0);
      expect(gone.stderr).toContain('no agent agent-alpha');

      // ...and the same identity with a fresh TPM key has nothing signed for it: 403.
      const again = await run('demo-agent.sh', ['create', '--identity', 'agent-alpha']);
      expect(again.code, explain(again)).toBe(0);
      const next = await run('demo-agent.sh', [
        'prompt',
        'agent-alpha',
        '--prompt',
        'Get https://docstore/health',
      ]);
      expect(next.code, explain(next)).not.toBe(0);
      expect(next.stderr).toContain('CONNECT tunnel failed, response 403');
    },
    5 * MINUTE,
  );

  it(
    'teardown leaves no demo process, port or file',
    async () => {
      processes = recordedProcesses(stateDir);
      // postgres, 2 mocks, gateway, principal and root swtpm/dbus/abrmd, and for each agent
      // swtpm/dbus/abrmd/sidecar.
      expect(processes.length).toBeGreaterThanOrEqual(18);
      for (const p of processes) expect(processStartTime(p.pid), p.file).toBe(p.start);
      const before = listeningPorts();
      for (const name of [
        'GATEWAY',
        'ADMIN',
        'PG',
        'DOCSTORE',
        'MESSAGING',
        'PRINCIPAL_SWTPM',
        'ROOT_SWTPM',
        'SWTPM',
      ]) {
        expect(before.has(ports[name] as number), `${name} listening before teardown`).toBe(true);
      }

      const r = await run('demo.sh', ['teardown'], 3 * MINUTE);
      demo.tornDown = true;
      expect(r.code, explain(r)).toBe(0);

      for (const p of processes)
        expect(processStartTime(p.pid), `${p.file} (pid ${p.pid})`).not.toBe(p.start);
      expect(processesMentioning(tmp)).toEqual([]);
      expect(processesMentioning(pgDir)).toEqual([]);
      // Nothing listens on any port the demo was given (a bind test could trip over an unrelated client
      // socket that happened to get the same ephemeral port).
      const listening = listeningPorts();
      for (const [name, port] of Object.entries(ports)) {
        expect(listening.has(port), `${name} port ${port} still listening`).toBe(false);
      }
      expect(existsSync(stateDir)).toBe(false);
      expect(existsSync(pgDir)).toBe(false);
      expect(existsSync(path.join(tmp, 'config.toml'))).toBe(false);
      expect(existsSync(path.join(tmp, 'certs'))).toBe(false);
      // Only the test's own copy of the SPKI is left in its temp dir.
      expect(readdirSync(tmp)).toEqual(['agent-alpha.spki.der']);
    },
    4 * MINUTE,
  );
});
