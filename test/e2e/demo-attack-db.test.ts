// The demo's root of trust (issue #15; README "Attack: the database alone grants nothing"): setup roots
// org-alice with a root key in its own swtpm and writes the root into the gateway's policy.trust_roots;
// `./demo/demo.sh attack-db`, as the registry's admin role without the root key, inserts a principal key, a
// scope and a grant signed by that key, and the gateway answers 403 signer_not_rooted while org-alice's
// grants keep working. The attacker's rows are otherwise valid: with trust_roots emptied, the same
// attack-db gets its CONNECT allowed (this test then fails at the 403).
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listeningPorts, processesMentioning, processStartTime } from '../../dev-support/proc.js';
import { runCommand } from '../../dev-support/run-command.js';
import {
  createDemoRun,
  type DemoRun,
  explain,
  MINUTE,
  readStateFile,
  recordedProcesses,
} from '../support/demo-run.js';

const ROOT_KEY_ID = /^sha256:[0-9a-f]{64}$/;

/** psql as the demo's registry admin role; the tuples of `sql`. */
async function adminQuery(demo: DemoRun, sql: string): Promise<string> {
  const state = readStateFile(path.join(demo.stateDir, 'demo.env'));
  const r = await runCommand(
    'psql',
    ['-X', '-tA', '-v', 'ON_ERROR_STOP=1', '-d', state['DB_ADMIN_URL'] ?? '', '-c', sql],
    {
      env: demo.env(),
      timeoutMs: MINUTE,
    },
  );
  expect(r.code, explain(r)).toBe(0);
  return r.stdout.trim();
}

describe('demo attack-db: the registry admin role without the root key grants nothing', () => {
  let demo: DemoRun;

  beforeAll(async () => {
    demo = await createDemoRun('agw-demo-attack-');
  });

  afterAll(async () => {
    if (demo !== undefined) await demo.cleanUp();
  }, 3 * MINUTE);

  it(
    "setup makes a root in its own swtpm, puts it in the gateway's trust_roots and roots org-alice",
    async () => {
      const r = await demo.run('demo.sh', ['setup'], 8 * MINUTE);
      expect(r.code, explain(r)).toBe(0);
      expect(JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '')).toEqual({
        status: 'ok',
        service: 'docstore',
      });

      const state = readStateFile(path.join(demo.stateDir, 'demo.env'));
      const root = state['ROOT_KEY_ID'] ?? '';
      expect(root).toMatch(ROOT_KEY_ID);
      expect(state['ROOT_SWTPM_PORT']).toBe(String(demo.ports['ROOT_SWTPM']));
      // Its own TPM and store, not the principal's.
      expect(existsSync(path.join(demo.stateDir, 'root', 'tpm2-pkcs11'))).toBe(true);
      expect(state['PRINCIPAL_STORE']).not.toContain(path.join(demo.stateDir, 'root'));
      const config = readFileSync(path.join(demo.tmp, 'config.toml'), 'utf8');
      expect(config).toContain(`trust_roots = ["${state['ROOT_SPKI_B64']}"]`);
      // org-alice's key and all three scope rows carry that root's signature.
      const rooted = await adminQuery(
        demo,
        `SELECT (SELECT count(*) FROM principal_signing_keys WHERE key_id = 'org-alice' AND root_key_id = '${root}' AND root_signature IS NOT NULL) || ' ' ||
                (SELECT count(*) FROM principal_key_permissions WHERE signing_key_id = 'org-alice' AND root_key_id = '${root}' AND root_signature IS NOT NULL)`,
      );
      expect(rooted).toBe('1 3');
      // The gateway logged the root in force.
      expect(readFileSync(path.join(demo.stateDir, 'logs', 'gateway.log'), 'utf8')).toContain(root);
    },
    9 * MINUTE,
  );

  it(
    'attack-db: 403 signer_not_rooted, check explains the chain, the rows are revoked afterwards',
    async () => {
      const logFile = path.join(demo.stateDir, 'logs', 'gateway.log');
      const logBefore = readFileSync(logFile, 'utf8').length;
      const r = await demo.run('demo.sh', ['attack-db'], 5 * MINUTE);
      expect(r.code, explain(r)).toBe(0);
      expect(r.stderr).toContain('1. inserting principal key attacker-');
      expect(r.stderr).toContain('as agent_gateway_demo_admin');
      expect(r.stderr).toContain('curl: CONNECT docstore:443 -> 403');
      expect(r.stderr).toContain('→ 403 signer_not_rooted');
      expect(r.stderr).toMatch(/deny: signer_not_rooted: signing key attacker-\S+ has no root signature/);
      expect(r.stderr).toMatch(/root -> key: principal key attacker-\S+: FAILS: no root signature/);

      // The gateway itself denied agent-mallory for that reason, and allowed nothing for it.
      const lines = readFileSync(logFile, 'utf8')
        .slice(logBefore)
        .split('\n')
        .filter((l) => l.includes('"source_identity":"agent-mallory"'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const connects = lines.filter((l) => /^CONNECT /.test(String(l['msg'])));
      expect(connects.map((l) => [l['msg'], l['deny_reason'], l['status']])).toEqual([
        ['CONNECT denied', 'signer_not_rooted', 403],
      ]);

      // Cleaned up: every attacker row is revoked (0005 forbids DELETE).
      const left = await adminQuery(
        demo,
        `SELECT (SELECT count(*) FROM principal_signing_keys WHERE key_id LIKE 'attacker-%' AND revoked_at IS NULL) + ` +
          `(SELECT count(*) FROM principal_key_permissions WHERE signing_key_id LIKE 'attacker-%' AND revoked_at IS NULL) + ` +
          `(SELECT count(*) FROM permission_registry WHERE permission_id LIKE 'attack-%' AND revoked_at IS NULL) || ' ' || ` +
          `(SELECT count(*) FROM permission_registry WHERE permission_id LIKE 'attack-%')`,
      );
      expect(left).toBe('0 1');
    },
    6 * MINUTE,
  );

  it(
    "org-alice's rooted grant still works: agent-alpha gets docstore (200)",
    async () => {
      const r = await demo.run('demo-agent.sh', [
        'prompt',
        'agent-alpha',
        '--prompt',
        'Get https://docstore/health',
      ]);
      expect(r.code, explain(r)).toBe(0);
      expect(r.stdout).toContain('{"status":"ok","service":"docstore"}');
    },
    3 * MINUTE,
  );

  it(
    'teardown stops the root TPM with everything else',
    async () => {
      const processes = recordedProcesses(demo.stateDir);
      const rootProcs = processes.filter((p) => p.file.includes(`${path.sep}root${path.sep}tpm${path.sep}`));
      expect(rootProcs.map((p) => path.basename(p.file)).sort()).toEqual([
        'abrmd.proc',
        'dbus.proc',
        'swtpm.proc',
      ]);
      for (const p of processes) expect(processStartTime(p.pid), p.file).toBe(p.start);

      const r = await demo.run('demo.sh', ['teardown'], 3 * MINUTE);
      demo.tornDown = true;
      expect(r.code, explain(r)).toBe(0);
      expect(r.stderr).toContain("==> Stopping the root's TPM");
      for (const p of processes)
        expect(processStartTime(p.pid), `${p.file} (pid ${p.pid})`).not.toBe(p.start);
      expect(processesMentioning(demo.tmp)).toEqual([]);
      const listening = listeningPorts();
      for (const [name, port] of Object.entries(demo.ports)) {
        expect(listening.has(port), `${name} port ${port} still listening`).toBe(false);
      }
      expect(existsSync(demo.stateDir)).toBe(false);
    },
    4 * MINUTE,
  );
});
