// A throwaway, real PostgreSQL for tests and the benchmark.
//
// - startPostgres(): initdb's a fresh cluster in a temp dir with Debian's binaries
//   (/usr/lib/postgresql/<highest>/bin), listening on 127.0.0.1:<free port> only, unix socket inside the temp
//   dir, trust auth, fsync=off. stop() = pg_ctl stop -m fast, start() = same data dir, same port.
// - startPostgres({ externalUrl }): an existing server instead (TEST_DATABASE_URL, BENCH_DATABASE_URL), as an
//   "external" handle: stop()/start() refuse, destroy() does nothing.
// - createDatabase(adminUrl, name): a fresh database per test file (or bench run), so runs never collide;
//   createMigratedDatabase(adminUrl, name): the same with the migrations applied;
//   createDatabaseAtVersion(adminUrl, name, version): migrations 1..version only, a registry as an older
//   build (or the original system) left it.
// - applyMigrations(url): the project's migration runner (core/migrate.ts), as production applies it.
//
// As root, initdb/pg_ctl run as the `postgres` OS user (runuser), which owns the temp dir.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { appendFile, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { listMigrations, migrate } from '../core/migrate.js';
import { freePort } from './ports.js';
import { reapOnExit } from './reap-on-exit.js';
import { runCommand } from './run-command.js';

export interface PgHandle {
  /** Superuser URL, database `postgres`. */
  url: string;
  port: number;
  /** True when this handle is an existing server (externalUrl): nothing to stop, start or destroy. */
  external: boolean;
  /** Temp dir holding data/, the unix socket and postgres.log ('' when external). */
  dir: string;
  dataDir: string;
  binDir: string;
  /** pg_ctl stop -m fast (idempotent). */
  stop(): Promise<void>;
  /** Start the same cluster again on the same port (idempotent). */
  start(): Promise<void>;
  /** Stop and remove everything (idempotent). */
  destroy(): Promise<void>;
}

export interface StartPostgresOptions {
  /** A superuser URL of an existing server to use instead of a private cluster (which stop/start needs). */
  externalUrl?: string | undefined;
}

const PG_ROOT = '/usr/lib/postgresql';

/** Debian's PostgreSQL bin dir with the highest major version (never /usr/local/bin). */
export function findPgBinDir(): string {
  const versions = existsSync(PG_ROOT)
    ? readdirSync(PG_ROOT)
        .filter((v) => /^\d+(\.\d+)?$/.test(v))
        .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    : [];
  for (const v of versions) {
    const bin = path.join(PG_ROOT, v, 'bin');
    if (existsSync(path.join(bin, 'initdb')) && existsSync(path.join(bin, 'pg_ctl'))) return bin;
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

async function tail(file: string, lines = 30): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function pgCmd(binary: string, args: string[]): Promise<{ code: number; output: string }> {
  const [cmd, argv] = asPgUser(binary, args);
  // cwd '/' so the postgres user is never in a directory it cannot read.
  const r = await runCommand(cmd, argv, { env: pgEnv(), cwd: '/', timeoutMs: 120_000 });
  return { code: r.code, output: (r.stdout + r.stderr).trim() };
}

function externalHandle(url: string): PgHandle {
  const refuse = async () => {
    throw new Error(
      'an existing server cannot be stopped or started: use a private cluster (startPostgres() without externalUrl)',
    );
  };
  return {
    url,
    port: Number(new URL(url).port || 5432),
    external: true,
    dir: '',
    dataDir: '',
    binDir: '',
    stop: refuse,
    start: refuse,
    destroy: async () => {},
  };
}

export async function startPostgres(options: StartPostgresOptions = {}): Promise<PgHandle> {
  if (options.externalUrl) return externalHandle(options.externalUrl);

  const binDir = findPgBinDir();
  // As root the cluster runs as `postgres`, which must be able to reach the dir: /tmp always allows that.
  const dir = await mkdtemp(path.join(isRoot() ? '/tmp' : os.tmpdir(), 'agw-pg-'));
  // If this process dies without destroy(): SIGQUIT (immediate shutdown) the postmaster, remove the dir.
  const reaper = reapOnExit({ dir, signal: 'SIGQUIT' });
  const dataDir = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  const pgCtl = path.join(binDir, 'pg_ctl');
  const fail = async (what: string, output: string): Promise<never> => {
    const log = await tail(logFile);
    rmSync(dir, { recursive: true, force: true });
    reaper.release();
    throw new Error(`postgres: ${what}\n${output}\n--- ${logFile} ---\n${log}`);
  };

  if (isRoot()) {
    const { uid, gid } = postgresIds();
    chownSync(dir, uid, gid);
  }
  const init = await pgCmd(path.join(binDir, 'initdb'), [
    '-D',
    dataDir,
    '-U',
    'postgres',
    '--auth=trust',
    '--encoding=UTF8',
    '--locale=C',
    '--no-sync',
  ]);
  if (init.code !== 0) await fail('initdb failed', init.output);

  await appendFile(path.join(dataDir, 'postgresql.conf'), "\ninclude 'agw-test.conf'\n");
  await writeFile(
    path.join(dataDir, 'pg_hba.conf'),
    'local all all trust\nhost all all 127.0.0.1/32 trust\n',
  );

  const writeConf = (port: number) =>
    writeFile(
      path.join(dataDir, 'agw-test.conf'),
      [
        "listen_addresses = '127.0.0.1'",
        `port = ${port}`,
        `unix_socket_directories = '${dir}'`,
        'fsync = off',
        'synchronous_commit = off',
        'full_page_writes = off',
        'max_connections = 200',
        'shared_buffers = 32MB',
        '',
      ].join('\n'),
    );

  let running = false;
  const startCluster = async (): Promise<{ code: number; output: string }> => {
    const r = await pgCmd(pgCtl, ['-D', dataDir, '-l', logFile, '-w', '-t', '60', 'start']);
    if (r.code === 0) {
      running = true;
      const pid = Number((await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
      reaper.setPids([pid]);
    }
    return r;
  };

  // The free port may be taken between probing and binding: retry with a new one.
  let port = 0;
  let lastOutput = '';
  for (let attempt = 0; attempt < 5 && !running; attempt++) {
    port = await freePort();
    await writeConf(port);
    lastOutput = (await startCluster()).output;
  }
  if (!running) await fail('pg_ctl start failed', lastOutput);

  let destroyed = false;
  const handle: PgHandle = {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    port,
    external: false,
    dir,
    dataDir,
    binDir,
    async stop() {
      if (destroyed || !running) return;
      const r = await pgCmd(pgCtl, ['-D', dataDir, '-m', 'fast', '-w', '-t', '60', 'stop']);
      if (r.code !== 0) {
        const status = await pgCmd(pgCtl, ['-D', dataDir, 'status']);
        if (status.code !== 3) throw new Error(`pg_ctl stop failed\n${r.output}\n${await tail(logFile)}`);
      }
      running = false;
      reaper.setPids([]);
    },
    async start() {
      if (destroyed) throw new Error('postgres: start() after destroy()');
      if (running) return;
      const r = await startCluster();
      if (r.code !== 0)
        throw new Error(`pg_ctl start failed (port ${port})\n${r.output}\n${await tail(logFile)}`);
    },
    async destroy() {
      if (destroyed) return;
      if (running) {
        await pgCmd(pgCtl, ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
        running = false;
      }
      destroyed = true;
      rmSync(dir, { recursive: true, force: true });
      reaper.release();
    },
  };
  return handle;
}

function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(db)}`;
  return u.toString();
}

/**
 * Create a fresh, empty database and return its URL. The name is `name` sanitized plus a random
 * suffix, so concurrent runs against the same server never collide.
 */
export async function createDatabase(adminUrl: string, name: string): Promise<string> {
  const base = name
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .replace(/^_+|_+$/g, '')
    .slice(0, 40);
  const db = `${base || 'test'}_${randomBytes(4).toString('hex')}`;
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE "${db}"`);
  } finally {
    await client.end();
  }
  return withDatabase(adminUrl, db);
}

/** A fresh database (see createDatabase) with the project's migrations applied: an empty registry. */
export async function createMigratedDatabase(adminUrl: string, name: string): Promise<string> {
  const url = await createDatabase(adminUrl, name);
  await applyMigrations(url);
  return url;
}

/** Drop the database named in `databaseUrl` (terminating its connections). */
export async function dropDatabase(adminUrl: string, databaseUrl: string): Promise<void> {
  const db = decodeURIComponent(new URL(databaseUrl).pathname.slice(1));
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${db.replace(/"/g, '""')}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/** Apply every migrations/NNNN_*.sql not applied yet; returns the applied migration names. */
export function applyMigrations(url: string): Promise<string[]> {
  return migrate(url);
}

/** A fresh database (see createDatabase) with migrations 1..version applied, through the same runner. */
export async function createDatabaseAtVersion(
  adminUrl: string,
  name: string,
  version: number,
): Promise<string> {
  const url = await createDatabase(adminUrl, name);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'agw-mig-'));
  try {
    for (const m of listMigrations().slice(0, version)) copyFileSync(m.path, path.join(dir, m.name));
    await migrate(url, dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return url;
}
