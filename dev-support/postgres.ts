// A throwaway, real PostgreSQL for tests and the benchmark.
//
// - startPostgres(): a fresh cluster (pg-cluster.ts, as the demo runs its own) in a temp dir, listening on
//   127.0.0.1:<free port> only, trust auth, nothing fsynced. stop() = pg_ctl stop -m fast, start() = same data
//   dir, same port. If the test process dies without destroy(), the postmaster gets SIGQUIT and the dir goes.
// - startPostgres({ externalUrl }): an existing server instead (TEST_DATABASE_URL, BENCH_DATABASE_URL), as an
//   "external" handle: stop()/start() refuse, destroy() does nothing.
// - createDatabase(adminUrl, name): a fresh database per test file (or bench run), so runs never collide;
//   createMigratedDatabase(adminUrl, name): the same with the migrations applied;
//   createDatabaseAtVersion(adminUrl, name, version): migrations 1..version only, a registry as an older
//   build (or the original system) left it.
// - applyMigrations(url): the project's migration runner (core/migrate.ts), as production applies it.
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { errorText } from '../core/error-text.js';
import { listMigrations, migrate } from '../core/migrate.js';
import {
  type ClusterOptions,
  clusterPaths,
  findPgBinDir,
  initCluster,
  ownedClusterDir,
  startCluster,
  stopCluster,
} from './pg-cluster.js';
import { freePort } from './ports.js';
import { reapOnExit } from './reap-on-exit.js';

export { findPgBinDir };

export interface PgHandle {
  /** Superuser URL, database `postgres`. */
  url: string;
  port: number;
  /** True when this handle is an existing server (externalUrl): nothing to stop, start or destroy. */
  external: boolean;
  /** Temp dir holding data/, run/ (the unix socket) and postgres.log ('' when external). */
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

const THROWAWAY: ClusterOptions = { hostAuth: 'trust', throwaway: true, maxConnections: 200 };

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
  const dir = await ownedClusterDir(await mkdtemp(path.join(os.tmpdir(), 'agw-pg-')), '/var/tmp/agw-pg-');
  const reaper = reapOnExit({ dir, signal: 'SIGQUIT' });
  const fail = (err: unknown): never => {
    rmSync(dir, { recursive: true, force: true });
    reaper.release();
    throw new Error(`postgres: ${errorText(err)}`, { cause: err });
  };

  let running = false;
  const startOn = async (port: number) => {
    const pid = await startCluster(dir, port, THROWAWAY);
    running = true;
    reaper.setPids([pid]);
  };

  // The free port may be taken between probing and binding: retry with a new one.
  let port = 0;
  try {
    await initCluster(dir, THROWAWAY);
    for (let attempt = 1; !running; attempt++) {
      port = await freePort();
      await startOn(port).catch((err: unknown) => {
        if (attempt >= 5) throw err;
      });
    }
  } catch (err) {
    fail(err);
  }

  let destroyed = false;
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    port,
    external: false,
    dir,
    dataDir: clusterPaths(dir).dataDir,
    binDir,
    async stop() {
      if (destroyed || !running) return;
      await stopCluster(dir, 'fast');
      running = false;
      reaper.setPids([]);
    },
    async start() {
      if (destroyed) throw new Error('postgres: start() after destroy()');
      if (!running) await startOn(port);
    },
    async destroy() {
      if (destroyed) return;
      if (running) {
        await stopCluster(dir, 'immediate').catch(() => undefined);
        running = false;
      }
      destroyed = true;
      rmSync(dir, { recursive: true, force: true });
      reaper.release();
    },
  };
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
