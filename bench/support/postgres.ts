/**
 * A throwaway PostgreSQL cluster for one bench run (same recipe as test/support/postgres.ts, which the build
 * does not compile): Debian's binaries, 127.0.0.1 on a free port, trust auth, fsync off, removed at the end.
 * BENCH_DATABASE_URL (a superuser URL) uses an existing server instead; the bench then creates and drops
 * its own database there.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { appendFile, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { freePort } from './net.js';

export type BenchPostgres = {
  /** URL of a fresh database with the project's migrations applied. */
  readonly databaseUrl: string;
  stop(): Promise<void>;
};

const PG_ROOT = '/usr/lib/postgresql';
const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

function binDir(): string {
  const versions = existsSync(PG_ROOT)
    ? readdirSync(PG_ROOT)
        .filter((v) => /^\d+(\.\d+)?$/.test(v))
        .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    : [];
  for (const v of versions) {
    const bin = path.join(PG_ROOT, v, 'bin');
    if (existsSync(path.join(bin, 'initdb'))) return bin;
  }
  throw new Error(
    `no PostgreSQL server binaries under ${PG_ROOT}/*/bin (install postgresql or set BENCH_DATABASE_URL)`,
  );
}

function pgRun(binary: string, args: string[]): void {
  const env: NodeJS.ProcessEnv = { LC_ALL: 'C', LANG: 'C', PATH: process.env['PATH'] ?? '/usr/bin:/bin' };
  const [cmd, argv] = isRoot() ? ['runuser', ['-u', 'postgres', '--', binary, ...args]] : [binary, args];
  const r = spawnSync(cmd, argv, { env, cwd: '/', encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0)
    throw new Error(`${path.basename(binary)} ${args.join(' ')} failed:\n${r.stdout}${r.stderr}`);
}

async function createDatabase(adminUrl: string): Promise<string> {
  const db = `agw_bench_${randomBytes(4).toString('hex')}`;
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE "${db}"`);
  } finally {
    await client.end();
  }
  const u = new URL(adminUrl);
  u.pathname = `/${db}`;
  return u.toString();
}

async function dropDatabase(adminUrl: string, url: string): Promise<void> {
  const db = decodeURIComponent(new URL(url).pathname.slice(1));
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

export async function startBenchPostgres(migrate: (url: string) => Promise<unknown>): Promise<BenchPostgres> {
  const external = process.env['BENCH_DATABASE_URL'];
  if (external) {
    const databaseUrl = await createDatabase(external);
    await migrate(databaseUrl);
    return { databaseUrl, stop: () => dropDatabase(external, databaseUrl) };
  }
  const bin = binDir();
  const dir = await mkdtemp(path.join(isRoot() ? '/tmp' : os.tmpdir(), 'agw-bench-pg-'));
  const dataDir = path.join(dir, 'data');
  const pgCtl = path.join(bin, 'pg_ctl');
  let running = false;
  const stopNow = () => {
    if (running) {
      running = false;
      try {
        pgRun(pgCtl, ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
      } catch {
        // already down
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stopNow);
  try {
    if (isRoot()) {
      const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim());
      const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim());
      chownSync(dir, uid, gid);
    }
    pgRun(path.join(bin, 'initdb'), [
      '-D',
      dataDir,
      '-U',
      'postgres',
      '--auth=trust',
      '--encoding=UTF8',
      '--locale=C',
      '--no-sync',
    ]);
    await appendFile(path.join(dataDir, 'postgresql.conf'), "\ninclude 'agw-bench.conf'\n");
    await writeFile(
      path.join(dataDir, 'pg_hba.conf'),
      'local all all trust\nhost all all 127.0.0.1/32 trust\n',
    );
    let port = 0;
    let lastError: unknown;
    for (let attempt = 0; attempt < 5 && !running; attempt++) {
      port = await freePort();
      await writeFile(
        path.join(dataDir, 'agw-bench.conf'),
        `listen_addresses = '127.0.0.1'\nport = ${port}\nunix_socket_directories = '${dir}'\n` +
          'fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\nshared_buffers = 32MB\n',
      );
      try {
        pgRun(pgCtl, ['-D', dataDir, '-l', path.join(dir, 'postgres.log'), '-w', '-t', '60', 'start']);
        running = true;
      } catch (err) {
        lastError = err;
      }
    }
    if (!running) throw lastError;
    const adminUrl = `postgresql://postgres@127.0.0.1:${port}/postgres`;
    const databaseUrl = await createDatabase(adminUrl);
    await migrate(databaseUrl);
    return {
      databaseUrl,
      async stop() {
        process.removeListener('exit', stopNow);
        if (running) {
          running = false;
          pgRun(pgCtl, ['-D', dataDir, '-m', 'fast', '-w', 'stop']);
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    stopNow();
    throw err;
  }
}
