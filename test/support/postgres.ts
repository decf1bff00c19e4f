// A throwaway, real PostgreSQL for tests.
//
// - startPostgres(): uses TEST_DATABASE_URL when set (an "external" handle: stop()/start() refuse), otherwise
//   initdb's a fresh cluster in a temp dir with Debian's binaries (/usr/lib/postgresql/<highest>/bin),
//   listening on 127.0.0.1:<free port> only, unix socket inside the temp dir, trust auth, fsync=off.
// - startPostgres({ own: true }): always a private cluster. Use this in tests that stop/start the database
//   (stop() = pg_ctl stop -m fast, start() = same data dir, same port).
// - createDatabase(adminUrl, name): a fresh database per test file, so files can run in parallel.
// - applyMigrations(url): runs the project's migration runner (core/migrate.ts, `migrate(url)`).
//
// As root, initdb/pg_ctl run as the `postgres` OS user (runuser), which owns the temp dir.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { appendFile, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { freePort } from './ports.js';
import { reapOnExit, repoRoot, runCommand } from './processes.js';

export interface PgHandle {
  /** Superuser URL, database `postgres`. */
  url: string;
  port: number;
  /** True when this handle is TEST_DATABASE_URL: nothing to stop, start or destroy. */
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
  /** Ignore TEST_DATABASE_URL and always start a private cluster (needed to stop/start it). */
  own?: boolean;
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
    `no PostgreSQL server binaries under ${PG_ROOT}/*/bin (apt-get install postgresql, or set TEST_DATABASE_URL)`,
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
      'TEST_DATABASE_URL is external: use startPostgres({ own: true }) to stop/start a database',
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
  const envUrl = process.env['TEST_DATABASE_URL'];
  if (envUrl && !options.own) return externalHandle(envUrl);

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

type MigrateFn = (databaseUrl: string) => Promise<string[]>;

/**
 * Apply every migrations/NNNN_*.sql in order through the project's own runner (core/migrate.ts,
 * `migrate(databaseUrl): Promise<string[]>`). Returns what it returns (the applied migration names).
 */
export async function applyMigrations(url: string): Promise<string[]> {
  const candidates = [
    path.join(repoRoot, 'core', 'migrate.ts'),
    path.join(repoRoot, 'dist', 'core', 'migrate.js'),
  ];
  const file = candidates.find((f) => existsSync(f));
  if (!file) throw new Error(`applyMigrations: no migration runner at ${candidates.join(' or ')}`);
  const mod = (await import(pathToFileURL(file).href)) as { migrate?: MigrateFn };
  if (typeof mod.migrate !== 'function')
    throw new Error(`applyMigrations: ${file} does not export migrate()`);
  return mod.migrate(url);
}
