// Receipts that cannot be written (issue #17 "Tests"; docs/contract.md "Receipts", writer): with
// on_failure = "deny", once a write fails new CONNECTs get 503 receipts_unavailable, the failure is
// counted and /readyz says 503, while tunnels already open keep running; when the disk takes writes
// again, CONNECTs get 200 again and the chain has every receipt, unbroken.
//
// The tests run as root, for whom no permission bit makes a directory unwritable, so the receipts
// directory is a 256 KiB tmpfs the test fills: ENOSPC is the failure a full disk gives everyone, and it
// hits the open file the writer appends to (a chmod would not). The tmpfs lives in the gateway's own
// mount namespace (`unshare --mount`), so it disappears with the gateway; the test reaches it through
// /proc/<pid>/root.
import { mkdir, open, rm, unlink } from 'node:fs/promises';
import type { ClientHttp2Session } from 'node:http2';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  makeTempDir,
  openTunnel,
  roundTrip,
  scrapeMetric,
  startGatewayProcess,
} from '../support/gateway.js';
import { Pump } from '../support/pump.js';
import {
  chainProblems,
  type ReceiptKey,
  receiptsSection,
  waitForChain,
  writeReceiptKey,
} from '../support/receipts.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const GATEWAY_ID = 'gw-unwritable-e2e';
const MOUNT_AND_EXEC = 'mount -t tmpfs -o size=256k,mode=0755 agw-receipts "$0" && exec "$@"';

/** Write zeros to `file` until the filesystem is full. */
async function fill(file: string): Promise<number> {
  const fh = await open(file, 'w');
  const block = Buffer.alloc(4096);
  let written = 0;
  try {
    for (;;) {
      try {
        written += (await fh.write(block)).bytesWritten;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') return written;
        throw err;
      }
    }
  } finally {
    await fh.close().catch(() => {});
  }
}

describe('receipts: a disk that takes no writes, on_failure = "deny"', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let dir: string;
  let mountPoint: string;
  let key: ReceiptKey;
  let echo: Upstream;
  let alpha: Carrier;
  let gw: GatewayProcess;
  let session: ClientHttp2Session;
  /** The receipts directory as the gateway sees it, from outside its mount namespace. */
  let inside: string;

  const metric = async (name: string) => (await scrapeMetric(gw.adminPort!, name)) ?? 0;
  const readyz = async () => {
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/readyz`);
    return { status: r.status, body: await r.text() };
  };
  /** One CONNECT; a 200 tunnel moves 10 bytes and closes, so its receipt is queued. */
  const connect = async () => {
    const t = await openTunnel(session, 'docstore:443');
    if (t.status === 200) {
      await roundTrip(t.stream, Buffer.alloc(10, 0x61));
      t.stream.end();
      t.stream.resume();
      await closed(t.stream);
    } else {
      await t.body();
    }
    return { status: t.status, reason: t.headers['agent-gateway-deny-reason'] };
  };

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'receipts_unwritable');
    echo = await startEchoServer();
    alpha = await createCarrier('agent-alpha');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: alpha.identity,
      subjectSpkiDer: alpha.spkiDer,
      destination: 'docstore:443',
    });
    dir = await makeTempDir('agw-receipts-full-');
    mountPoint = path.join(dir, 'receipts');
    await mkdir(mountPoint);
    key = await writeReceiptKey(dir);
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      launcher: ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', MOUNT_AND_EXEC, mountPoint],
      config: {
        receipts: receiptsSection(mountPoint, key.keyPath, GATEWAY_ID, { on_failure: 'deny' }),
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
      },
    });
    inside = `/proc/${gw.proc.pid}/root${mountPoint}`;
    session = await connectH2(gw.port, { ca: gw.caPem, carrier: alpha });
  });

  afterAll(async () => {
    if (session) await closeSession(session);
    await gw?.cleanup();
    await echo?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('new CONNECTs get 503 receipts_unavailable while writes fail, and 200 again once they work', async () => {
    expect(await connect()).toMatchObject({ status: 200 });
    await waitForChain(inside, GATEWAY_ID, (c) => c.tunnels.length === 1);
    expect(await metric('agent_gateway_receipt_write_failures_total')).toBe(0);
    expect((await readyz()).status).toBe(200);

    // A tunnel opened before the disk fills: it must keep running through the failure.
    const kept = await openTunnel(session, 'docstore:443');
    expect(kept.status).toBe(200);
    const pump = new Pump(kept.stream);
    expect(await pump.flowing(100)).toBe(true);

    const filler = path.join(inside, 'filler');
    expect(await fill(filler)).toBeGreaterThan(0);
    // What is left of the receipt file's last page may take a few more lines: CONNECT until one is refused.
    let refused: { status: number; reason: unknown } | undefined;
    let allowedWhileFull = 0;
    for (let i = 0; i < 40 && refused === undefined; i++) {
      const r = await connect();
      if (r.status === 200) {
        allowedWhileFull++;
        await sleep(100);
      } else refused = r;
    }
    expect(refused, `still 200 after ${allowedWhileFull} CONNECTs on a full disk`).toEqual({
      status: 503,
      reason: 'receipts_unavailable',
    });
    expect(await metric('agent_gateway_receipt_write_failures_total')).toBeGreaterThan(0);
    expect(await metric('agent_gateway_receipts_failing')).toBe(1);
    const failing = await readyz();
    expect(failing.status).toBe(503);
    expect(failing.body).toMatch(/receipt/);
    expect(await pump.flowing()).toBe(true);
    expect(pump.closedAt).toBeUndefined();
    expect(await connect()).toEqual({ status: 503, reason: 'receipts_unavailable' });

    await unlink(filler);
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      await sleep(100);
      status = (await connect()).status;
    }
    expect(status).toBe(200);
    expect(await metric('agent_gateway_receipts_failing')).toBe(0);
    expect((await readyz()).status).toBe(200);

    // Nothing was lost: the queued receipts were written once the disk took them, chain unbroken.
    pump.stop();
    await closed(pump.stream);
    const allowed = 1 + 1 + allowedWhileFull + 1;
    const chain = await waitForChain(
      inside,
      GATEWAY_ID,
      (c) => c.tunnels.length >= allowed && c.receipts.at(-1)?.kind === 'checkpoint',
    );
    expect(chainProblems(chain, GATEWAY_ID, key.publicKey, key.keyId)).toEqual([]);
    expect(chain.gaps).toEqual([]);
    expect(chain.tunnels.length).toBe(allowed);
    expect(chain.tunnels.every((t) => t.decision === 'allow')).toBe(true);
  });
});
