// A streaming replica of a pg-cluster.ts cluster, for the fleet tests and ./demo/fleet.sh (through cli.ts):
// pg_basebackup -R of the primary over its unix socket (trusted, so no replication password exists and
// nothing but the two sockets is involved), then pg_ctl start on its own 127.0.0.1 port as a hot standby.
//
// The primary needs nothing beyond pg-cluster.ts's defaults (wal_level replica and max_wal_senders 10 are
// PostgreSQL's own) except the `local replication` line of pg_hba.conf, which initCluster writes and
// ensureReplicationAccess() adds to a cluster made before it did.
//
// - createReplica(primaryDir, dir): base backup into DIR/data unless a cluster is there already.
// - startReplica(...) in the tests: createReplica + startCluster on a free port, with stop/start/destroy
//   and pause/resume of WAL replay (pg_wal_replay_pause()), removed when the test process ends.
import { existsSync } from 'node:fs';
import { appendFile, chmod, mkdtemp, readFile, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { errorText } from '../core/error-text.js';
import {
  type ClusterOptions,
  clusterPaths,
  findPgBinDir,
  ownByPostgres,
  ownedClusterDir,
  pgCmd,
  startCluster,
  stopCluster,
} from './pg-cluster.js';
import { freePort } from './ports.js';
import { reapOnExit } from './reap-on-exit.js';

const REPLICATION_HBA = 'local replication all trust';

/** Make sure the primary in `primaryDir` lets a local replication connection in (pg_ctl reload if added). */
export async function ensureReplicationAccess(primaryDir: string): Promise<void> {
  const { dataDir } = clusterPaths(primaryDir);
  const hba = path.join(dataDir, 'pg_hba.conf');
  const lines = (await readFile(hba, 'utf8')).split('\n').map((l) => l.trim());
  if (lines.includes(REPLICATION_HBA)) return;
  await appendFile(hba, `${REPLICATION_HBA}\n`);
  const r = await pgCmd(path.join(findPgBinDir(dataDir), 'pg_ctl'), ['-D', dataDir, 'reload']);
  if (r.code !== 0) throw new Error(`pg_ctl reload of the primary failed\n${r.output}`);
}

/**
 * Base backup of the running primary in `primaryDir` into `dir`/data with standby.signal and
 * primary_conninfo (-R), unless `dir` holds a cluster already. True when it made one. `dir` must exist and
 * be the cluster owner's (ownedClusterDir).
 */
export async function createReplica(primaryDirGiven: string, dir: string): Promise<boolean> {
  const { dataDir } = clusterPaths(dir);
  // The postgres user may not be able to pass a link's own directory (as root, a 0700 temp dir).
  const primaryDir = await realpath(primaryDirGiven);
  if (existsSync(path.join(dataDir, 'PG_VERSION'))) return false;
  await ensureReplicationAccess(primaryDir);
  const primary = clusterPaths(primaryDir);
  const r = await pgCmd(path.join(findPgBinDir(primary.dataDir), 'pg_basebackup'), [
    '-D',
    dataDir,
    '-R',
    '-X',
    'stream',
    '-c',
    'fast',
    '-h',
    primary.socketDir,
    '-p',
    String(await primaryPort(primaryDir)),
    '-U',
    'postgres',
  ]);
  if (r.code !== 0) throw new Error(`pg_basebackup from ${primaryDir} failed\n${r.output}`);
  await chmod(dataDir, 0o700);
  await ownByPostgres(dataDir);
  return true;
}

/** The port the primary runs on (its socket file is named after it). */
async function primaryPort(primaryDir: string): Promise<number> {
  const pid = path.join(clusterPaths(primaryDir).dataDir, 'postmaster.pid');
  if (!existsSync(pid)) throw new Error(`the primary in ${primaryDir} is not running`);
  return Number((await readFile(pid, 'utf8')).split('\n')[3]);
}

export interface ReplicaHandle {
  /** Superuser URL, database `postgres`, of the replica (read-only: a hot standby). */
  url: string;
  port: number;
  dir: string;
  /** pg_ctl stop -m fast (idempotent). */
  stop(): Promise<void>;
  /** Start again on the same port (idempotent); it resumes streaming from the primary. */
  start(): Promise<void>;
  /** pg_wal_replay_pause() / pg_wal_replay_resume(): the replica stops (resumes) applying WAL. */
  pauseReplay(): Promise<void>;
  resumeReplay(): Promise<void>;
  /** Resolves once the replica has replayed everything the primary had written when called. */
  caughtUp(primaryUrl: string, timeoutMs?: number): Promise<void>;
  destroy(): Promise<void>;
}

const THROWAWAY: ClusterOptions = { hostAuth: 'trust', throwaway: true, maxConnections: 200 };

/** A throwaway streaming replica of the test cluster in `primaryDir` (dev-support/postgres.ts PgHandle.dir). */
export async function startReplica(primaryDir: string): Promise<ReplicaHandle> {
  const dir = await ownedClusterDir(await mkdtemp(path.join(os.tmpdir(), 'agw-pgr-')), '/var/tmp/agw-pgr-');
  const reaper = reapOnExit({ dir, signal: 'SIGQUIT' });
  let running = false;
  let port = 0;
  const startOn = async (p: number) => {
    const pid = await startCluster(dir, p, THROWAWAY);
    running = true;
    reaper.setPids([pid]);
  };
  try {
    await createReplica(primaryDir, dir);
    for (let attempt = 1; !running; attempt++) {
      port = await freePort();
      await startOn(port).catch((err: unknown) => {
        if (attempt >= 5) throw err;
      });
    }
  } catch (err) {
    await stopCluster(dir, 'immediate').catch(() => undefined);
    reaper.release();
    throw new Error(`replica: ${errorText(err)}`, { cause: err });
  }
  const url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
  const sql = async (text: string, values: unknown[] = []) => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return (await c.query(text, values)).rows;
    } finally {
      await c.end();
    }
  };
  let destroyed = false;
  return {
    url,
    port,
    dir,
    async stop() {
      if (destroyed || !running) return;
      await stopCluster(dir, 'fast');
      running = false;
      reaper.setPids([]);
    },
    async start() {
      if (destroyed) throw new Error('replica: start() after destroy()');
      if (!running) await startOn(port);
    },
    async pauseReplay() {
      await sql('SELECT pg_wal_replay_pause()');
    },
    async resumeReplay() {
      await sql('SELECT pg_wal_replay_resume()');
    },
    async caughtUp(primaryUrl, timeoutMs = 10_000) {
      const p = new pg.Client({ connectionString: primaryUrl });
      await p.connect();
      let target: string;
      try {
        target = (await p.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0]!.l;
      } finally {
        await p.end();
      }
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const [row] = await sql('SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok', [target]);
        if (row?.['ok'] === true) return;
        if (Date.now() > deadline) throw new Error(`replica did not replay ${target} within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async destroy() {
      if (destroyed) return;
      destroyed = true;
      if (running) await stopCluster(dir, 'immediate').catch(() => undefined);
      running = false;
      await rm(dir, { recursive: true, force: true });
      reaper.release();
    },
  };
}
