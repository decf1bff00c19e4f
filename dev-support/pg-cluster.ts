// One PostgreSQL cluster in one directory, the way both users run it: the tests' throwaway clusters
// (postgres.ts, removed when the test process ends) and the demo's long-lived one (cli.ts, called by
// demo/demo.sh, running until `demo.sh teardown`).
//
// Layout of DIR: data/ (the cluster), run/ (its unix socket, mode 0700), postgres.log. Debian's server
// binaries (/usr/lib/postgresql/<version>/bin), listening on 127.0.0.1 only, local connections trusted. As
// root every server binary runs as the `postgres` OS user (runuser), which owns DIR.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { appendFile, chmod, chown, mkdir, mkdtemp, readFile, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runCommand } from './run-command.js';

const PG_ROOT = '/usr/lib/postgresql';
/** The file the cluster's postgresql.conf includes: where it listens and how it is tuned. */
const CONF = 'agent-gateway.conf';

export interface ClusterOptions {
  /** How TCP clients on 127.0.0.1 authenticate (the unix socket is always trusted). */
  hostAuth: 'trust' | 'scram-sha-256';
  /** Nothing is ever fsynced (initdb --no-sync, fsync off): fast, and lost with a crash of the machine. */
  throwaway: boolean;
  maxConnections: number;
}

export interface ClusterPaths {
  dir: string;
  dataDir: string;
  socketDir: string;
  logFile: string;
}

export function clusterPaths(dir: string): ClusterPaths {
  return {
    dir,
    dataDir: path.join(dir, 'data'),
    socketDir: path.join(dir, 'run'),
    logFile: path.join(dir, 'postgres.log'),
  };
}

/**
 * Debian's PostgreSQL bin dir (never /usr/local/bin): the one of the cluster's major version when `dataDir`
 * holds a cluster already, else the highest installed.
 */
export function findPgBinDir(dataDir?: string): string {
  const hasServer = (bin: string) =>
    existsSync(path.join(bin, 'initdb')) && existsSync(path.join(bin, 'pg_ctl'));
  if (dataDir !== undefined && existsSync(path.join(dataDir, 'PG_VERSION'))) {
    const version = readFileSync(path.join(dataDir, 'PG_VERSION'), 'utf8').trim();
    const bin = path.join(PG_ROOT, version, 'bin');
    if (hasServer(bin)) return bin;
    throw new Error(`${dataDir} is a PostgreSQL ${version} cluster and ${bin} has no initdb/pg_ctl`);
  }
  const versions = existsSync(PG_ROOT)
    ? readdirSync(PG_ROOT)
        .filter((v) => /^\d+(\.\d+)?$/.test(v))
        .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    : [];
  for (const v of versions) {
    const bin = path.join(PG_ROOT, v, 'bin');
    if (hasServer(bin)) return bin;
  }
  throw new Error(
    `no PostgreSQL server binaries under ${PG_ROOT}/*/bin (apt-get install postgresql, or use an existing server)`,
  );
}

const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

function postgresIds(): { uid: number; gid: number } {
  const r = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (r.status !== 0 || g.status !== 0) throw new Error('running as root but there is no `postgres` OS user');
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/** Hand `file` to the cluster owner (only root has to: otherwise we are the owner). */
export async function ownByPostgres(file: string): Promise<void> {
  if (!isRoot()) return;
  const { uid, gid } = postgresIds();
  await chown(file, uid, gid);
}

/** argv to run a PostgreSQL binary, as the postgres user when we are root. */
function asPgUser(binary: string, args: string[]): [string, string[]] {
  return isRoot() ? ['runuser', ['-u', 'postgres', '--', binary, ...args]] : [binary, args];
}

function pgEnv(): NodeJS.ProcessEnv {
  // Keep libpq/pg_ctl away from any PG* settings of the caller; C locale for reproducibility.
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  env['LC_ALL'] = 'C';
  env['LANG'] = 'C';
  return env;
}

export async function pgCmd(binary: string, args: string[]): Promise<{ code: number; output: string }> {
  const [cmd, argv] = asPgUser(binary, args);
  // cwd '/' so the postgres user is never in a directory it cannot read.
  const r = await runCommand(cmd, argv, { env: pgEnv(), cwd: '/', timeoutMs: 120_000 });
  return { code: r.code, output: (r.stdout + r.stderr).trim() };
}

/** The last lines of the cluster's log, for error messages. */
export async function clusterLogTail(dir: string, lines = 30): Promise<string> {
  const { logFile } = clusterPaths(dir);
  try {
    const text = (await readFile(logFile, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
    return `--- ${logFile} ---\n${text}`;
  } catch {
    return `--- ${logFile} --- (no log)`;
  }
}

/**
 * A directory for a cluster: `dir` (created if missing) when the cluster owner can write it, else, as root
 * when the `postgres` user cannot reach `dir` (e.g. it lies under root's 0700 home), `dir` is removed again
 * and a fresh directory named `fallbackPrefix` + 6 random characters is made instead. Returns the one used.
 */
export async function ownedClusterDir(dir: string, fallbackPrefix: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o700);
  if (!isRoot()) return dir;
  await ownByPostgres(dir);
  const reach = spawnSync('runuser', ['-u', 'postgres', '--', 'test', '-w', dir], { cwd: '/' });
  if (reach.status === 0) return dir;
  await rmdir(dir);
  const fallback = await mkdtemp(fallbackPrefix);
  await ownByPostgres(fallback);
  return fallback;
}

/** initdb into DIR/data unless a cluster is there already. True when it ran initdb. */
export async function initCluster(dir: string, opts: ClusterOptions): Promise<boolean> {
  const { dataDir } = clusterPaths(dir);
  if (existsSync(path.join(dataDir, 'PG_VERSION'))) return false;
  const init = await pgCmd(path.join(findPgBinDir(), 'initdb'), [
    '-D',
    dataDir,
    '-U',
    'postgres',
    // pg_hba.conf is written below; initdb refuses password methods without a superuser password, which the
    // caller sets over the trusted unix socket once the cluster runs.
    '--auth=trust',
    '--encoding=UTF8',
    '--locale=C',
    ...(opts.throwaway ? ['--no-sync'] : []),
  ]);
  if (init.code !== 0) throw new Error(`initdb failed\n${init.output}`);
  await writeFile(
    path.join(dataDir, 'pg_hba.conf'),
    `local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 ${opts.hostAuth}\n`,
  );
  return true;
}

/** Write DIR/data/agent-gateway.conf for `port` (and make sure postgresql.conf includes it). */
async function writeClusterConf(dir: string, port: number, opts: ClusterOptions): Promise<void> {
  const { dataDir, socketDir } = clusterPaths(dir);
  const main = path.join(dataDir, 'postgresql.conf');
  const include = `include '${CONF}'`;
  if (!(await readFile(main, 'utf8')).split('\n').includes(include)) await appendFile(main, `\n${include}\n`);
  const settings = [
    "listen_addresses = '127.0.0.1'",
    `port = ${port}`,
    `unix_socket_directories = '${socketDir}'`,
    'unix_socket_permissions = 0700',
    `max_connections = ${opts.maxConnections}`,
    ...(opts.throwaway
      ? ['fsync = off', 'synchronous_commit = off', 'full_page_writes = off', 'shared_buffers = 32MB']
      : []),
  ];
  const conf = path.join(dataDir, CONF);
  await writeFile(conf, `${settings.join('\n')}\n`);
  await ownByPostgres(conf);
  await mkdir(socketDir, { recursive: true, mode: 0o700 });
  await ownByPostgres(socketDir);
}

/** The running postmaster's pid and port (from its postmaster.pid), or undefined when it does not run. */
export async function runningCluster(dir: string): Promise<{ pid: number; port: number } | undefined> {
  const { dataDir } = clusterPaths(dir);
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) return undefined;
  const status = await pgCmd(path.join(findPgBinDir(dataDir), 'pg_ctl'), ['-D', dataDir, 'status']);
  if (status.code !== 0) return undefined;
  const lines = (await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n');
  return { pid: Number(lines[0]), port: Number(lines[3]) };
}

/**
 * pg_ctl start on 127.0.0.1:`port` (waits until it accepts connections). Resolves with the postmaster's pid;
 * rejects with pg_ctl's output and the log's tail (e.g. when the port is taken).
 */
export async function startCluster(dir: string, port: number, opts: ClusterOptions): Promise<number> {
  const { dataDir, logFile } = clusterPaths(dir);
  await writeClusterConf(dir, port, opts);
  const pgCtl = path.join(findPgBinDir(dataDir), 'pg_ctl');
  const r = await pgCmd(pgCtl, ['-D', dataDir, '-l', logFile, '-w', '-t', '60', 'start']);
  if (r.code !== 0)
    throw new Error(`pg_ctl start (port ${port}) failed\n${r.output}\n${await clusterLogTail(dir)}`);
  return Number((await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
}

/** pg_ctl stop: `fast` ends the sessions and shuts down cleanly, `immediate` does not. Done when not running. */
export async function stopCluster(dir: string, mode: 'fast' | 'immediate'): Promise<void> {
  const { dataDir } = clusterPaths(dir);
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) return;
  const pgCtl = path.join(findPgBinDir(dataDir), 'pg_ctl');
  const r = await pgCmd(pgCtl, ['-D', dataDir, '-m', mode, '-w', '-t', '60', 'stop']);
  if (r.code === 0) return;
  // 3: not running (pg_ctl status), which is what stop is for.
  const status = await pgCmd(pgCtl, ['-D', dataDir, 'status']);
  if (status.code !== 3) throw new Error(`pg_ctl stop failed\n${r.output}\n${await clusterLogTail(dir)}`);
}
