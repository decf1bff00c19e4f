/**
 * The long-lived PostgreSQL cluster and software TPMs of the demo (demo/demo.sh, demo/lib.sh), started by
 * the same code as the tests' throwaway ones (pg-cluster.ts, tpm-stack.ts). What it starts outlives this
 * process; the caller records the pids it prints and stops the TPM daemons by them.
 *
 *   node dist/dev-support/cli.js postgres start --dir DIR --port PORT [--host-auth trust|scram-sha-256]
 *        [--max-connections N] [--fallback-prefix PREFIX]
 *     initdb DIR/data unless a cluster is there, then pg_ctl start on 127.0.0.1:PORT unless it runs. As root,
 *     when the postgres user cannot reach DIR, the cluster goes to a fresh PREFIX<random> (default
 *     /var/tmp/agw-pg-) and DIR becomes a link to it.
 *     Answer: dir= linked=0|1 initialized=0|1 started=0|1 pid= port= (port: where it runs, which is not
 *     PORT when it was running already)
 *   node dist/dev-support/cli.js postgres stop --dir DIR        pg_ctl stop -m fast (done when not running)
 *   node dist/dev-support/cli.js postgres replica --primary-dir PDIR --dir DIR --port PORT
 *        [--max-connections N] [--fallback-prefix PREFIX]
 *     A streaming replica (hot standby) of the running cluster in PDIR (pg-replica.ts): pg_basebackup -R over
 *     PDIR's unix socket into DIR/data unless a cluster is there, then pg_ctl start on 127.0.0.1:PORT unless
 *     it runs. Stop it with `postgres stop --dir DIR`. Answer: as `postgres start`.
 *   node dist/dev-support/cli.js tpm start --dir DIR --port PORT
 *     swtpm on 127.0.0.1:PORT and PORT+1, D-Bus and tpm2-abrmd; DIR/env holds the client environment.
 *     Answer: swtpm_pid= dbus_pid= abrmd_pid=
 *   node dist/dev-support/cli.js port free PORT       exit status 0 when 127.0.0.1:PORT is free, 1 when not
 *   node dist/dev-support/cli.js port quiet [--pair]   a free port below the ephemeral range (ports.ts
 *     quietFreePort; with --pair P and P+1 are free). Answer: port=
 *
 * The answer is KEY=value lines on stdout; progress and errors go to stderr. Exit status 1 on failure, 2 on
 * a usage error.
 */
import { existsSync } from 'node:fs';
import { realpath, symlink } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { errorText } from '../core/error-text.js';
import {
  type ClusterOptions,
  clusterPaths,
  initCluster,
  ownedClusterDir,
  runningCluster,
  startCluster,
  stopCluster,
} from './pg-cluster.js';
import { createReplica } from './pg-replica.js';
import { isPortFree, quietFreePort } from './ports.js';
import { startTpmStack } from './tpm-stack.js';

class UsageError extends Error {}

const OPTIONS = {
  dir: { type: 'string' },
  'primary-dir': { type: 'string' },
  port: { type: 'string' },
  'host-auth': { type: 'string', default: 'trust' },
  'max-connections': { type: 'string', default: '100' },
  'fallback-prefix': { type: 'string', default: '/var/tmp/agw-pg-' },
  pair: { type: 'boolean', default: false },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

function required(values: Values, name: 'dir' | 'port' | 'primary-dir'): string {
  const v = values[name];
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function portOf(text: string): number {
  const port = Number(text);
  if (!/^\d+$/.test(text) || port < 1 || port > 65535) throw new UsageError(`--port ${text} is not a port`);
  return port;
}

function answer(values: Record<string, string | number | boolean>): void {
  for (const [k, v] of Object.entries(values)) {
    process.stdout.write(`${k}=${typeof v === 'boolean' ? Number(v) : v}\n`);
  }
}

/** `wanted`, or (as root, when the postgres user cannot reach it) a fresh dir that `wanted` links to. */
async function clusterDir(wanted: string, fallbackPrefix: string): Promise<{ dir: string; linked: boolean }> {
  if (existsSync(path.join(clusterPaths(wanted).dataDir, 'PG_VERSION')))
    return { dir: wanted, linked: false };
  const dir = await ownedClusterDir(wanted, fallbackPrefix);
  if (dir === wanted) return { dir, linked: false };
  await symlink(dir, wanted);
  return { dir, linked: true };
}

async function postgresStart(values: Values): Promise<void> {
  const hostAuth = values['host-auth'];
  if (hostAuth !== 'trust' && hostAuth !== 'scram-sha-256')
    throw new UsageError(`--host-auth must be trust or scram-sha-256, not ${hostAuth}`);
  const opts: ClusterOptions = { hostAuth, throwaway: false, maxConnections: maxConnectionsOf(values) };
  await startAndAnswer(values, opts, (dir) => initCluster(dir, opts));
}

/** `postgres replica`: the same answer as postgresStart, for a standby of --primary-dir. */
async function postgresReplica(values: Values): Promise<void> {
  const opts: ClusterOptions = {
    hostAuth: 'trust',
    throwaway: false,
    maxConnections: maxConnectionsOf(values),
  };
  const primaryDir = path.resolve(required(values, 'primary-dir'));
  await startAndAnswer(values, opts, (dir) => createReplica(primaryDir, dir));
}

function maxConnectionsOf(values: Values): number {
  const maxConnections = Number(values['max-connections']);
  if (!Number.isInteger(maxConnections) || maxConnections < 1)
    throw new UsageError(`--max-connections ${values['max-connections']} is not a count`);
  return maxConnections;
}

/** The cluster in --dir, made by `init` when new, started on --port unless it runs already; then the answer. */
async function startAndAnswer(
  values: Values,
  opts: ClusterOptions,
  init: (dir: string) => Promise<boolean>,
): Promise<void> {
  const port = portOf(required(values, 'port'));
  const wanted = path.resolve(required(values, 'dir'));
  const { dir, linked } = await clusterDir(wanted, values['fallback-prefix']);
  const initialized = await init(dir);
  const running = await runningCluster(dir);
  if (running !== undefined) {
    answer({ dir, linked, initialized, started: false, pid: running.pid, port: running.port });
    return;
  }
  const pid = await startCluster(dir, port, opts);
  answer({ dir, linked, initialized, started: true, pid, port });
}

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true });
  const command = positionals.join(' ');
  switch (command) {
    case 'postgres start':
      return postgresStart(values);
    case 'postgres replica':
      return postgresReplica(values);
    case 'postgres stop': {
      // Through a link (`linked=1`) the postgres user may not pass the link's own directory.
      const dir = path.resolve(required(values, 'dir'));
      return stopCluster(await realpath(dir).catch(() => dir), 'fast');
    }
    case 'tpm start': {
      const stack = await startTpmStack(path.resolve(required(values, 'dir')), {
        port: portOf(required(values, 'port')),
      });
      answer({ swtpm_pid: stack.pids.swtpm, dbus_pid: stack.pids.dbus, abrmd_pid: stack.pids.abrmd });
      return;
    }
    case 'port quiet':
      answer({ port: await quietFreePort({ pair: values.pair }) });
      return;
    default: {
      const [what, check, port] = positionals;
      if (what === 'port' && check === 'free' && port !== undefined && positionals.length === 3) {
        if (!(await isPortFree(portOf(port)))) process.exitCode = 1;
        return;
      }
      throw new UsageError(
        `unknown command "${command}" (postgres start|stop|replica, tpm start, port free|quiet)`,
      );
    }
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const usage =
    err instanceof UsageError || (err as { code?: unknown }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION';
  process.stderr.write(`dev-support: ${errorText(err)}\n`);
  process.exitCode = usage ? 2 : 1;
});
