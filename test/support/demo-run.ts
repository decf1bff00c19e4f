// Running the demo (demo/demo.sh, demo/demo-agent.sh) from an e2e test as a new user would, isolated in a
// temp dir with its own free ports and state, and the facts about what it left behind.
import { type Dirent, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { quietFreePort } from '../../dev-support/ports.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { type CommandResult, runCommand } from '../../dev-support/run-command.js';

export const MINUTE = 60_000;

export type DemoRun = {
  readonly tmp: string;
  readonly stateDir: string;
  /** Ports handed to the demo by name (GATEWAY, PG, SWTPM, SWTPM_CTRL, ...); each must be free after teardown. */
  readonly ports: Record<string, number>;
  /** The demo's environment: the caller's without its database/TPM/proxy settings, plus the demo's. */
  env(extra?: Record<string, string>): NodeJS.ProcessEnv;
  /** Run demo/<script> with `args`. */
  run(script: string, args: string[], timeoutMs?: number): Promise<CommandResult>;
  /** Teardown unless the test already did, then remove the temp dir. */
  cleanUp(): Promise<void>;
  tornDown: boolean;
};

const PORTS = ['GATEWAY', 'ADMIN', 'PG', 'DOCSTORE', 'MESSAGING', 'SIDECAR'];
const PORT_PAIRS = ['SWTPM', 'PRINCIPAL_SWTPM', 'ROOT_SWTPM'];

export async function createDemoRun(prefix: string): Promise<DemoRun> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), prefix));
  const stateDir = path.join(tmp, 'state');
  // Ports below the kernel's ephemeral range, so no client socket (of this run or another test) is handed
  // one of them between the choice here and the demo binding it.
  const taken = new Set<number>();
  const ports: Record<string, number> = {};
  for (const name of PORTS) ports[name] = await quietFreePort({ taken });
  for (const name of PORT_PAIRS) {
    const p = await quietFreePort({ pair: true, taken });
    ports[name] = p;
    ports[`${name}_CTRL`] = p + 1;
  }
  const own: Record<string, string> = {
    AGENT_GATEWAY_DEMO_STATE_DIR: stateDir,
    AGENT_GATEWAY_DEMO_CERTS_DIR: path.join(tmp, 'certs'),
    AGENT_GATEWAY_DEMO_CONFIG: path.join(tmp, 'config.toml'),
    // The test command installs packages and builds before any test runs.
    AGENT_GATEWAY_DEMO_SKIP_APT: '1',
    AGENT_GATEWAY_DEMO_SKIP_BUILD: '1',
    // The built-in agent (curl), whatever AI tool this machine has.
    AGENT_GATEWAY_DEMO_AGENT_CMD: 'builtin:fetch',
  };
  for (const [name, port] of Object.entries(ports)) {
    if (!name.endsWith('_CTRL')) own[`AGENT_GATEWAY_DEMO_${name}_PORT`] = String(port);
  }
  // Only for trying the demo against another example file; normally config.example.toml.
  const example = process.env['AGENT_GATEWAY_DEMO_CONFIG_EXAMPLE'];
  if (example) own['AGENT_GATEWAY_DEMO_CONFIG_EXAMPLE'] = example;

  const env = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
    const e: NodeJS.ProcessEnv = { ...process.env };
    // Nothing of the caller's database or TPM set-up may leak into the demo.
    for (const k of Object.keys(e)) {
      if (
        /^(AGENT_GATEWAY_|TPM2|PKCS11_|DATABASE_URL$|PG[A-Z]+$|DBUS_SESSION_BUS_ADDRESS$|OPENSSL_ENGINES$)/.test(
          k,
        ) ||
        /^(https?|all|no)_proxy$/i.test(k)
      ) {
        delete e[k];
      }
    }
    return { ...e, ...own, ...extra };
  };
  const demo: DemoRun = {
    tmp,
    stateDir,
    ports,
    env,
    tornDown: false,
    run: (script, args, timeoutMs = 5 * MINUTE) =>
      runCommand(path.join(repoRoot, 'demo', script), args, { env: env(), timeoutMs, cwd: repoRoot }),
    cleanUp: async () => {
      if (!demo.tornDown) {
        // A failed test still must not leave the demo running.
        await demo.run('demo.sh', ['teardown'], 2 * MINUTE).catch(() => undefined);
      }
      await rm(tmp, { recursive: true, force: true });
    },
  };
  return demo;
}

export function explain(r: CommandResult): string {
  return `exit ${r.code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

/** KEY=value lines of a demo state file. */
export function readStateFile(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

export type RecordedProcess = { file: string; pid: number; start: string };

/** Every "PID STARTTIME" the demo recorded (run/*.pid, agents' sidecar.pid, tpm/*.proc). */
export function recordedProcesses(dir: string): RecordedProcess[] {
  const found: RecordedProcess[] = [];
  const walk = (d: string) => {
    let entries: Dirent[];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory() && !e.isSymbolicLink()) walk(p);
      else if (e.isFile() && /\.(pid|proc)$/.test(e.name)) {
        const [pid, start] = readFileSync(p, 'utf8').trim().split(/\s+/);
        if (pid !== undefined && start !== undefined && /^\d+$/.test(pid)) {
          found.push({ file: p, pid: Number(pid), start });
        }
      }
    }
  };
  walk(dir);
  return found;
}
