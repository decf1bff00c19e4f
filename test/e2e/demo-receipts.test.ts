// The demo's receipts walk-through (issue #17; README "Receipts and audit"): setup configures the demo's
// gateway with [receipts] in its state dir; after an agent's prompt, `./demo/demo.sh receipts` prints the
// receipt key, verifies the chain against the registry (exit 0), then edits a copy and shows verify
// refusing it. The chain on disk is also checked here without the verifier.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import { createDemoRun, type DemoRun, explain, MINUTE } from '../support/demo-run.js';
import { publicKeyFromPem, readChain, sha256Hex } from '../support/receipts.js';

describe('demo receipts: the demo gateway writes receipts an auditor verifies; a tampered copy fails', () => {
  let demo: DemoRun;

  beforeAll(async () => {
    demo = await createDemoRun('agw-demo-receipts-');
  });

  afterAll(async () => {
    if (demo !== undefined) await demo.cleanUp();
  }, 3 * MINUTE);

  it(
    'setup writes [receipts] into the config; a prompt through the gateway leaves tunnel receipts',
    async () => {
      const setup = await runCommand(path.join(repoRoot, 'demo', 'demo.sh'), ['setup'], {
        env: demo.env(),
        timeoutMs: 8 * MINUTE,
        cwd: repoRoot,
      });
      expect(setup.code, explain(setup)).toBe(0);
      const config = readFileSync(demo.env()['AGENT_GATEWAY_DEMO_CONFIG'] ?? '', 'utf8');
      expect(config).toMatch(/^\[receipts\]$/m);
      expect(config).toContain(`path = "${demo.stateDir}/receipts"`);
      const prompt = await demo.run('demo-agent.sh', [
        'prompt',
        'agent-alpha',
        '--prompt',
        'Access https://docstore/documents using curl',
      ]);
      expect(prompt.code, explain(prompt)).toBe(0);
    },
    10 * MINUTE,
  );

  it(
    'demo.sh receipts: verify exits 0 on the real chain and names the edited record of the copy',
    async () => {
      const r = await demo.run('demo.sh', ['receipts'], 2 * MINUTE);
      expect(r.code, explain(r)).toBe(0);
      const out = `${r.stdout}${r.stderr}`;
      expect(out).toMatch(/-----BEGIN PUBLIC KEY-----/);
      const keyId = /key_id: ([0-9a-f]{64})/.exec(out)?.[1];
      expect(keyId, out).toMatch(/^[0-9a-f]{64}$/);
      const edited = /\(seq (\d+)\)/.exec(out)?.[1];
      expect(edited, out).toBeDefined();
      expect(out).toMatch(/the edit is detected/);
      // The verify of the copy names the edited record or the one whose prev no longer matches it.
      const afterEdit = out.slice(out.indexOf('bytes_down of one receipt'));
      expect(afterEdit).toMatch(new RegExp(`seq (${edited}|${Number(edited) + 1})\\b`));

      const pem = readFileSync(path.join(demo.stateDir, 'receipts.pub.pem'), 'utf8');
      expect(sha256Hex(publicKeyFromPem(pem).export({ type: 'spki', format: 'der' }))).toBe(keyId);
      const chain = await readChain(path.join(demo.stateDir, 'receipts'), 'demo-gateway');
      // setup's proof request and the prompt each went through the gateway to docstore.
      const docstore = chain.tunnels.filter(
        (t) => t.destination === 'docstore:443' && t.decision === 'allow',
      );
      expect(docstore.length).toBeGreaterThanOrEqual(2);
      for (const t of docstore) expect(t.bytes_down).toBeGreaterThan(0);
    },
    3 * MINUTE,
  );
});
