// Receipts with server.workers = 2 (issue #17; docs/contract.md "Receipts", gateway id per worker): each
// worker writes its own chain in `<instance_id>-w<index>`; a worker killed with SIGKILL is replaced by one
// with the same index, whose chain continues the dead worker's with one unclean_stop gap; a clean stop
// ends both chains in a stop checkpoint, and receipts verify over both chains' files reports that gap
// only. The primary's /readyz reflects a worker whose receipts cannot be written (workers report it over
// IPC).
import { mkdir, readdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { type GatewayProcess, makeTempDir, startGatewayProcess } from '../support/gateway.js';
import {
  type Chain,
  chainProblems,
  echoTunnels,
  type ReceiptKey,
  readChain,
  receiptsSection,
  shown,
  verifyCommand,
  waitForChain,
  writeReceiptKey,
} from '../support/receipts.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const INSTANCE = 'gw-workers-e2e';
const idOf = (index: number) => `${INSTANCE}-w${index}`;
const CONNECTIONS = 8;
const PER_CONNECTION = 3;

/** The primary's children by their AGENT_GATEWAY_WORKER_INDEX (index → pid), read from /proc. */
async function workersOf(primary: number): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      // Fields after the command (which may hold spaces) in parentheses: state, ppid, …
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== primary) continue;
      const env = (await readFile(`/proc/${name}/environ`, 'utf8')).split('\0');
      const index = env.find((e) => e.startsWith('AGENT_GATEWAY_WORKER_INDEX='))?.split('=')[1];
      if (index !== undefined) out.set(Number(index), Number(name));
    } catch {
      // A process that exited while we looked.
    }
  }
  return out;
}

describe('receipts with server.workers = 2: one chain per worker, kept across a respawn', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let dir: string;
  let receiptsPath: string;
  let key: ReceiptKey;
  let echo: Upstream;
  let alpha: Carrier;
  let gw: GatewayProcess;
  /** bytes_up of every tunnel opened (each unique). */
  const sent: number[] = [];
  let killed: number;
  let beforeKill: Chain;

  const readyz = async () => {
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/readyz`);
    return { status: r.status, body: (await r.json()) as { checks: Record<string, { detail?: string }> } };
  };
  /** CONNECTIONS connections, PER_CONNECTION echo tunnels each, bytes_up from `from` up. */
  const tunnels = async (from: number) => {
    for (let c = 0; c < CONNECTIONS; c++) {
      sent.push(...(await echoTunnels(gw, alpha, 'docstore:443', PER_CONNECTION, from + c * 100)));
    }
  };
  const both = () => Promise.all([readChain(receiptsPath, idOf(1)), readChain(receiptsPath, idOf(2))]);
  const tunnelsOnDisk = async (n: number) => {
    await expect
      .poll(async () => (await both()).reduce((sum, c) => sum + c.tunnels.length, 0), { timeout: 10_000 })
      .toBe(n);
    return both();
  };

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'receipts_workers');
    echo = await startEchoServer();
    alpha = await createCarrier('agent-alpha');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: alpha.identity,
      subjectSpkiDer: alpha.spkiDer,
      destination: 'docstore:443',
    });
    dir = await makeTempDir('agw-receipts-workers-');
    receiptsPath = path.join(dir, 'receipts');
    key = await writeReceiptKey(dir);
    // Worker 2's directory is taken by a file, so its receipts start failing (removed in the first test).
    await mkdir(receiptsPath, { recursive: true });
    await writeFile(path.join(receiptsPath, idOf(2)), 'not a directory\n');
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        server: { workers: 2 },
        receipts: receiptsSection(receiptsPath, key.keyPath, INSTANCE),
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
      },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    await echo?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("the primary's /readyz is 503 while one worker's receipts fail, 200 once it writes", async () => {
    await expect.poll(async () => (await readyz()).status, { timeout: 10_000 }).toBe(503);
    const { body } = await readyz();
    expect(body.checks['receipts']?.detail).toMatch(/^1 of 2 workers: /);
    await unlink(path.join(receiptsPath, idOf(2)));
    // The writer retries every second; the worker reports within another second.
    await expect.poll(async () => (await readyz()).status, { timeout: 10_000 }).toBe(200);
  });

  it('tunnels on several connections are served by both workers, each in its own chain', async () => {
    await tunnels(1000);
    const chains = await tunnelsOnDisk(CONNECTIONS * PER_CONNECTION);
    for (const [i, c] of chains.entries()) {
      expect(c.tunnels.length, idOf(i + 1)).toBeGreaterThan(0);
      expect(new Set(c.receipts.map((r) => r.gateway))).toEqual(new Set([idOf(i + 1)]));
    }
  });

  it("SIGKILL of a worker: the primary forks a replacement with the dead worker's index", async () => {
    const workers = await workersOf(gw.proc.pid);
    expect([...workers.keys()].sort()).toEqual([1, 2]);
    killed = 1;
    const pid = workers.get(killed)!;
    // Killed once its chain is at rest (ends in the interval checkpoint), so nothing lands after this read.
    beforeKill = await waitForChain(
      receiptsPath,
      idOf(killed),
      (c) => c.receipts.at(-1)?.kind === 'checkpoint',
    );
    process.kill(pid, 'SIGKILL');
    await gw.waitForLogs('worker exited unexpectedly', (l) => l['worker_pid'] === pid, 10_000);
    const replaced = async () => {
      const now = (await workersOf(gw.proc.pid)).get(killed);
      return now !== undefined && now !== pid;
    };
    await expect.poll(replaced, { timeout: 20_000 }).toBe(true);
    // Listening again: the replacement recovered its chain before it took connections.
    await expect.poll(() => gw.logs('worker listening').length, { timeout: 20_000 }).toBe(3);
    const recovered = gw.logs('receipts: chain recovered').filter((l) => l['gateway'] === idOf(killed));
    expect(recovered.at(-1)).toMatchObject({
      last_seq: beforeKill.receipts.at(-1)!.seq,
      gap: 'unclean_stop',
    });
    expect((await workersOf(gw.proc.pid)).size).toBe(2);
  });

  it('more tunnels after the respawn; both chains grow', async () => {
    await tunnels(5000);
    const [w1, w2] = await tunnelsOnDisk(2 * CONNECTIONS * PER_CONNECTION);
    const after = killed === 1 ? w1! : w2!;
    const newRun = after.receipts.slice(beforeKill.receipts.length);
    expect(newRun[0]).toMatchObject({ kind: 'gap', reason: 'unclean_stop' });
    expect(newRun.filter((r) => r.kind === 'tunnel').length).toBeGreaterThan(0);
  });

  it('a clean stop ends each chain in a stop checkpoint; receipts verify reports exactly one gap', async () => {
    expect(await gw.stop()).toBe(0);
    const chains = await both();
    for (const [i, c] of chains.entries()) {
      const id = idOf(i + 1);
      expect(chainProblems(c, id, key.publicKey, key.keyId), id).toEqual([]);
      expect(c.receipts.at(-1), id).toMatchObject({ kind: 'checkpoint', cause: 'stop' });
    }
    // Every tunnel has exactly one receipt, in one of the two chains.
    const ups = chains.flatMap((c) => c.tunnels.map((t) => t.bytes_up)).sort((a, b) => a - b);
    expect(ups).toEqual([...sent].sort((a, b) => a - b));

    const dead = chains[killed - 1]!;
    const other = chains[2 - killed]!;
    expect(other.gaps).toEqual([]);
    expect(dead.gaps.length).toBe(1);
    expect(dead.gaps[0]).toMatchObject({
      reason: 'unclean_stop',
      seq: beforeKill.receipts.at(-1)!.seq + 1,
      lost_receipts: null,
    });
    // The gap opens a file of its own: the new run never appends to the dead worker's file.
    expect(path.basename(dead.files.at(-1)!)).toBe(
      `receipts-${String(dead.gaps[0]!.seq).padStart(12, '0')}.jsonl`,
    );

    const files = chains.flatMap((c) => c.files);
    const r = await verifyCommand(files, key.publicPath, ['--registry', dbUrl]);
    expect(r.code, shown(r)).toBe(0);
    // registry-cli receipts verify: gap records print as "<file>:<line> seq N: gap: <reason> …".
    const gapLines = `${r.stdout}${r.stderr}`.split('\n').filter((l) => /\bgap: /.test(l));
    expect(gapLines.length, shown(r)).toBe(1);
    expect(gapLines[0]).toContain(`${idOf(killed)}${path.sep}`);
    expect(gapLines[0]).toContain(`seq ${dead.gaps[0]!.seq}: gap: unclean_stop`);
  });
});
