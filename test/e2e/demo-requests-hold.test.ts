// The demo's access-request loop in hold mode (issue #16 item 6; README "Access requests"): with
// AGENT_GATEWAY_DEMO_HOLD_MS the demo's gateway holds a denied CONNECT of a key that has a grant, so when
// org-alice approves within the window the first prompt itself succeeds, without a retry.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { accessRequestId } from '../../core/access-request-id.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import { createDemoRun, type DemoRun, explain, MINUTE } from '../support/demo-run.js';

const HOLD_MS = 45_000;

describe('demo access requests with hold_ms: approving during the hold lets the first prompt succeed', () => {
  let demo: DemoRun;

  beforeAll(async () => {
    demo = await createDemoRun('agw-demo-hold-');
  });

  afterAll(async () => {
    if (demo !== undefined) await demo.cleanUp();
  }, 3 * MINUTE);

  it(
    'setup with AGENT_GATEWAY_DEMO_HOLD_MS writes [requests] hold_ms into the gateway config',
    async () => {
      const setup = await runCommand(path.join(repoRoot, 'demo', 'demo.sh'), ['setup'], {
        env: demo.env({ AGENT_GATEWAY_DEMO_HOLD_MS: String(HOLD_MS) }),
        timeoutMs: 8 * MINUTE,
        cwd: repoRoot,
      });
      expect(setup.code, explain(setup)).toBe(0);
      const config = readFileSync(demo.env()['AGENT_GATEWAY_DEMO_CONFIG'] ?? '', 'utf8');
      expect(config).toMatch(new RegExp(`^hold_ms = ${HOLD_MS}$`, 'm'));
      const created = await demo.run('demo-agent.sh', [
        'create',
        '--identity',
        'agent-beta',
        '--grant',
        'messaging',
      ]);
      expect(created.code, explain(created)).toBe(0);
    },
    10 * MINUTE,
  );

  it(
    'the prompt waits; org-alice approves the request it made; the same prompt gets the documents',
    async () => {
      const spki = readFileSync(path.join(demo.stateDir, 'demo-agents', 'agent-beta', 'spki.der'));
      const requestId = accessRequestId('agent-beta', spki, 'docstore:443');
      const started = Date.now();
      const prompt = demo.run('demo-agent.sh', [
        'prompt',
        'agent-beta',
        '--prompt',
        'Fetch https://docstore/documents',
      ]);
      // The request is recorded before the hold, so it is listed while the agent waits.
      let listed = '';
      while (!listed.includes(requestId) && Date.now() - started < 20_000) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        listed = (await demo.run('demo-agent.sh', ['requests'])).stdout;
      }
      expect(listed).toContain(requestId);
      const approved = await demo.run('demo-agent.sh', ['approve', requestId], 3 * MINUTE);
      expect(approved.code, explain(approved)).toBe(0);
      const answered = await prompt;
      const waited = Date.now() - started;
      expect(answered.code, explain(answered)).toBe(0);
      expect(answered.stdout).toContain('"documents"');
      expect(answered.stdout).not.toContain('agent-gateway-deny-reason');
      expect(waited).toBeLessThan(HOLD_MS);
    },
    3 * MINUTE,
  );
});
