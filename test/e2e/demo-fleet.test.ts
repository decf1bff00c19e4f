// ./demo/fleet.sh as a new user runs it (issue #18; README "Fleet"): up (a PostgreSQL primary and its
// streaming replica, three gateways, HAProxy health-checking their /readyz, two agents through HAProxy),
// status, revoke-test (a revoke on the primary ends tunnels on all three gateways within 1 s), down (every
// process it started is gone). Isolated in a temp dir with its own free ports, like the other demo tests.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quietFreePort } from '../../dev-support/ports.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import {
  createDemoRun,
  type DemoRun,
  explain,
  MINUTE,
  type RecordedProcess,
  recordedProcesses,
} from '../support/demo-run.js';

const FLEET_PORTS = [
  'HAPROXY',
  'HAPROXY_STATS',
  'REPLICA',
  'GATEWAY1',
  'GATEWAY2',
  'GATEWAY3',
  'ADMIN1',
  'ADMIN2',
  'ADMIN3',
];

function stillRunning(p: RecordedProcess): boolean {
  try {
    const stat = readFileSync(`/proc/${p.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] === p.start && fields[0] !== 'Z';
  } catch {
    return false;
  }
}

describe('demo fleet: primary + replica, three gateways behind HAProxy, revoke reaches every gateway', () => {
  let demo: DemoRun;
  let fleetEnv: Record<string, string>;
  let wentDown = false;
  const fleet = (cmd: string, timeoutMs = 5 * MINUTE) =>
    runCommand(path.join(repoRoot, 'demo', 'fleet.sh'), [cmd], {
      env: demo.env(fleetEnv),
      timeoutMs,
      cwd: repoRoot,
    });

  beforeAll(async () => {
    demo = await createDemoRun('agw-demo-fleet-');
    const taken = new Set(Object.values(demo.ports));
    fleetEnv = { AGENT_GATEWAY_FLEET_STATE_DIR: demo.stateDir };
    for (const name of FLEET_PORTS) {
      fleetEnv[`AGENT_GATEWAY_FLEET_${name}_PORT`] = String(await quietFreePort({ taken }));
    }
  });

  afterAll(async () => {
    if (demo === undefined) return;
    if (!wentDown) await fleet('down', 3 * MINUTE).catch(() => undefined);
    demo.tornDown = true;
    await demo.cleanUp();
  }, 4 * MINUTE);

  it(
    'up: every part starts and both agents reach docstore through HAProxy',
    async () => {
      const up = await fleet('up', 10 * MINUTE);
      expect(up.code, explain(up)).toBe(0);
      expect(up.stderr).toContain('(3/3 UP)');
      expect(up.stderr).toMatch(/agent-alpha: \{"status":"ok","service":"docstore"\}/);
      expect(up.stderr).toMatch(/agent-beta: \{"status":"ok","service":"docstore"\}/);
    },
    11 * MINUTE,
  );

  it('status: the primary streams to the replica, three gateways ready and UP in HAProxy', async () => {
    const status = await fleet('status', MINUTE);
    expect(status.code, explain(status)).toBe(0);
    expect(status.stdout).toMatch(/^primary .* in_recovery=false .* replicas=1$/m);
    expect(status.stdout).toMatch(/^replica .* in_recovery=true .* replay_paused=false$/m);
    for (const i of [1, 2, 3]) {
      expect(status.stdout).toMatch(new RegExp(`^gateway-${i} .*readyz: \\{"status":"ready"`, 'm'));
      expect(status.stdout).toMatch(new RegExp(`gateway-${i} UP`));
    }
  });

  it(
    'revoke-test: tunnels on all three gateways end within 1 s of the revoke on the primary',
    async () => {
      const r = await fleet('revoke-test', 3 * MINUTE);
      expect(r.code, explain(r)).toBe(0);
      expect(r.stdout).toMatch(/^revoked 1 permission\(s\) of agent-beta for docstore:443 on the primary$/m);
      for (const i of [1, 2, 3]) {
        const line = new RegExp(
          `^gateway-${i}: 2 tunnel\\(s\\) ended after (\\d+) ms, (\\d+) ms .* OK$`,
          'm',
        ).exec(r.stdout);
        expect(line, r.stdout).not.toBeNull();
        for (const ms of [line?.[1], line?.[2]]) expect(Number(ms)).toBeLessThan(1000);
      }
      // Granted again afterwards, so a second run works the same.
      const again = await fleet('revoke-test', 3 * MINUTE);
      expect(again.code, explain(again)).toBe(0);
    },
    7 * MINUTE,
  );

  it(
    'down: every process the fleet started is gone and its state removed',
    async () => {
      const started = recordedProcesses(demo.stateDir);
      expect(started.map((p) => path.basename(p.file))).toEqual(
        expect.arrayContaining([
          'haproxy.pid',
          'fleet-gateway-1.pid',
          'postgres-replica.pid',
          'postgres.pid',
        ]),
      );
      const down = await fleet('down', 3 * MINUTE);
      wentDown = true;
      expect(down.code, explain(down)).toBe(0);
      expect(started.filter(stillRunning)).toEqual([]);
      expect(existsSync(demo.stateDir)).toBe(false);
    },
    4 * MINUTE,
  );
});
