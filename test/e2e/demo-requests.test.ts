// The demo's access-request loop (issue #16; README "Access requests"), as a new user runs it: agent-beta,
// granted only messaging, asks for docstore and gets 403 naming the request the gateway recorded;
// `demo-agent.sh requests` lists it; `demo-agent.sh approve <id>` has org-alice's TPM key sign exactly that
// permission under her root-signed scope; the same prompt then gets 200. A request outside her scope is
// recorded too, and approving it is refused.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { accessRequestId } from '../../core/access-request-id.js';
import { runCommand } from '../../dev-support/run-command.js';
import { createDemoRun, type DemoRun, explain, MINUTE, readStateFile } from '../support/demo-run.js';

const DOCSTORE_PROMPT = 'Fetch https://docstore/documents';

/** psql as the demo's registry admin role; the tuples of `sql`. */
async function adminQuery(demo: DemoRun, sql: string): Promise<string> {
  const state = readStateFile(path.join(demo.stateDir, 'demo.env'));
  const r = await runCommand(
    'psql',
    ['-X', '-tA', '-v', 'ON_ERROR_STOP=1', '-d', state['DB_ADMIN_URL'] ?? '', '-c', sql],
    { env: demo.env(), timeoutMs: MINUTE },
  );
  expect(r.code, explain(r)).toBe(0);
  return r.stdout.trim();
}

describe('demo access requests: 403 names the request, org-alice approves it, the prompt succeeds', () => {
  let demo: DemoRun;
  let betaSpki: Buffer;
  let requestId = '';

  beforeAll(async () => {
    demo = await createDemoRun('agw-demo-requests-');
  });

  afterAll(async () => {
    if (demo !== undefined) await demo.cleanUp();
  }, 3 * MINUTE);

  /** `demo-agent.sh requests ARGS` until its output contains `want` (the gateway writes in batches). */
  async function requestsUntil(args: string[], want: string) {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await demo.run('demo-agent.sh', ['requests', ...args]);
      if ((r.code === 0 && r.stdout.includes(want)) || Date.now() > deadline) return r;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  it(
    'setup, then agent-beta with a grant for messaging only',
    async () => {
      const setup = await demo.run('demo.sh', ['setup'], 8 * MINUTE);
      expect(setup.code, explain(setup)).toBe(0);
      const created = await demo.run('demo-agent.sh', [
        'create',
        '--identity',
        'agent-beta',
        '--grant',
        'messaging',
      ]);
      expect(created.code, explain(created)).toBe(0);
      betaSpki = readFileSync(path.join(demo.stateDir, 'demo-agents', 'agent-beta', 'spki.der'));
      requestId = accessRequestId('agent-beta', betaSpki, 'docstore:443');
    },
    10 * MINUTE,
  );

  it(
    'the denied prompt shows the 403 with the request id of (agent-beta, its key, docstore:443)',
    async () => {
      const denied = await demo.run('demo-agent.sh', ['prompt', 'agent-beta', '--prompt', DOCSTORE_PROMPT]);
      expect(denied.code, explain(denied)).toBe(1);
      expect(denied.stderr).toContain('CONNECT tunnel failed, response 403');
      expect(denied.stdout).toContain('< agent-gateway-deny-reason: no_permission');
      expect(denied.stdout).toContain(`< agent-gateway-request-id: ${requestId}`);
      expect(denied.stdout).toContain(`./demo/demo-agent.sh approve ${requestId}`);
      expect(denied.stdout).not.toContain('"documents"');
    },
    3 * MINUTE,
  );

  it(
    'requests lists it as pending, with its identity, destination and count',
    async () => {
      const r = await requestsUntil([], requestId);
      expect(r.code, explain(r)).toBe(0);
      const line = r.stdout.split('\n').find((l) => l.includes(requestId)) ?? '';
      expect(line, explain(r)).toContain('agent-beta');
      expect(line).toContain('docstore:443');
      expect(line).toContain('no_permission');
      expect(line).toContain('pending');
      expect(
        await adminQuery(
          demo,
          `SELECT status, request_count FROM access_requests WHERE request_id = '${requestId}'`,
        ),
      ).toBe('pending|1');
    },
    2 * MINUTE,
  );

  it(
    "approve: org-alice's TPM key signs the permission and the request is marked approved",
    async () => {
      const r = await demo.run('demo-agent.sh', ['approve', requestId], 3 * MINUTE);
      expect(r.code, explain(r)).toBe(0);
      expect(r.stdout + r.stderr).toContain(requestId);
      expect(r.stderr).toContain('org-alice signed: agent-beta may reach docstore:443');

      const row = await adminQuery(
        demo,
        `SELECT a.status, a.decided_by, p.signing_key_id, p.subject_identity, p.destination,
                p.subject_public_key_spki_der = a.subject_public_key_spki_der, p.revoked_at IS NULL
         FROM access_requests a JOIN permission_registry p ON p.permission_id = a.permission_id
         WHERE a.request_id = '${requestId}'`,
      );
      expect(row).toBe('approved|org-alice|org-alice|agent-beta|docstore:443|t|t');
      expect(r.stdout).toContain(
        await adminQuery(demo, `SELECT permission_id FROM access_requests WHERE request_id = '${requestId}'`),
      );

      // No longer pending; --all still shows it, approved.
      const pending = await demo.run('demo-agent.sh', ['requests']);
      expect(pending.code, explain(pending)).toBe(0);
      expect(pending.stdout).not.toContain(requestId);
      const all = await demo.run('demo-agent.sh', ['requests', '--all']);
      expect(
        all.stdout.split('\n').find((l) => l.includes(requestId)),
        explain(all),
      ).toContain('approved');

      // Approving twice is refused, naming the status.
      const again = await demo.run('demo-agent.sh', ['approve', requestId], 3 * MINUTE);
      expect(again.code, explain(again)).toBe(1);
      expect(again.stderr).toContain('approved');
    },
    8 * MINUTE,
  );

  it(
    'the same prompt now gets the documents (200 through the tunnel)',
    async () => {
      const r = await demo.run('demo-agent.sh', ['prompt', 'agent-beta', '--prompt', DOCSTORE_PROMPT]);
      expect(r.code, explain(r)).toBe(0);
      expect(r.stdout).toContain('"documents":[');
      expect(r.stdout).toContain('Quarterly plan');
      const list = await demo.run('demo-agent.sh', ['list']);
      expect(list.stdout).toMatch(/^agent-beta\t.*grants=messaging,docstore$/m);
    },
    3 * MINUTE,
  );

  it(
    "a destination outside org-alice's scope is recorded, and approving it is refused",
    async () => {
      const outside = 'outside.example';
      const id = accessRequestId('agent-beta', betaSpki, `${outside}:443`);
      const denied = await demo.run('demo-agent.sh', [
        'prompt',
        'agent-beta',
        '--prompt',
        `Fetch https://${outside}/`,
      ]);
      expect(denied.code, explain(denied)).toBe(1);
      expect(denied.stdout).toContain(`< agent-gateway-request-id: ${id}`);
      const listed = await requestsUntil([], id);
      expect(listed.stdout, explain(listed)).toContain(id);

      const r = await demo.run('demo-agent.sh', ['approve', id], 3 * MINUTE);
      expect(r.code, explain(r)).toBe(1);
      expect(r.stderr).toMatch(/scope/);
      expect(
        await adminQuery(
          demo,
          `SELECT status, permission_id IS NULL FROM access_requests WHERE request_id = '${id}'`,
        ),
      ).toBe('pending|t');
      expect(
        await adminQuery(
          demo,
          `SELECT count(*) FROM permission_registry WHERE subject_identity = 'agent-beta' AND destination = '${outside}:443'`,
        ),
      ).toBe('0');
    },
    5 * MINUTE,
  );
});
