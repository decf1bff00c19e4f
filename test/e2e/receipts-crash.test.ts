// Receipts across a crash (issue #17 "Tests"; docs/contract.md "Receipts", restart): the gateway killed
// with SIGKILL, restarted on the same receipts directory, more tunnels. The chain continues from the last
// complete line on disk with exactly one explicit gap per crash: unclean_stop when the last line is whole,
// torn_line (bytes kept aside in <file>.torn-<ms>) when the crash left half a line. receipts verify
// reports exactly those gaps.
import { readdir, readFile, rm, truncate } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { GapReceipt } from '../../core/receipt-format.js';
import {
  type Carrier,
  createCarrier,
  createPrincipalKey,
  createTestCa,
  type TestCa,
} from '../../dev-support/pki.js';
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
  startGatewayProcess,
} from '../support/gateway.js';
import {
  type Chain,
  chainProblems,
  echoTunnels,
  type ReceiptKey,
  readChain,
  receiptsSection,
  shown,
  tornFiles,
  verifyCommand,
  waitForChain,
  writeReceiptKey,
} from '../support/receipts.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const GATEWAY_ID = 'gw-crash-e2e';

/** The "gap:" lines of a verify report (one per gap record it found; registry-cli receipts verify --help). */
function reportedGaps(out: string): string[] {
  return out.split('\n').filter((l) => /\bgap\b/.test(l) && /unclean_stop|torn_line|dropped/.test(l));
}

describe('receipts: kill -9, restart, the chain continues with exactly the gap', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let dir: string;
  let receiptsPath: string;
  let key: ReceiptKey;
  let ca: TestCa;
  let echo: Upstream;
  let alpha: Carrier;
  let gw: GatewayProcess | undefined;
  /** Gaps expected so far, in order. */
  const expectedGaps: { reason: GapReceipt['reason']; afterSeq: number; lostBytes: number }[] = [];

  const start = async () => {
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      ca,
      config: {
        receipts: receiptsSection(receiptsPath, key.keyPath, GATEWAY_ID),
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
      },
    });
    return gw;
  };
  const kill9 = async () => {
    expect(await gw!.stop('SIGKILL')).toBe(137);
    await gw!.cleanup();
    gw = undefined;
  };
  const tunnelsOnDisk = (n: number) =>
    waitForChain(receiptsPath, GATEWAY_ID, (c: Chain) => c.tunnels.length >= n);

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'receipts_crash');
    echo = await startEchoServer();
    alpha = await createCarrier('agent-alpha');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: alpha.identity,
      subjectSpkiDer: alpha.spkiDer,
      destination: 'docstore:443',
    });
    ca = await createTestCa();
    dir = await makeTempDir('agw-receipts-crash-');
    receiptsPath = path.join(dir, 'receipts');
    key = await writeReceiptKey(dir);
  });

  afterAll(async () => {
    await gw?.cleanup();
    await echo?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('SIGKILL after the receipts are on disk: the next run starts a new file with a gap unclean_stop', async () => {
    await echoTunnels(await start(), alpha, 'docstore:443', 10);
    await tunnelsOnDisk(10);
    await kill9();
    const before = await readChain(receiptsPath, GATEWAY_ID);
    await echoTunnels(await start(), alpha, 'docstore:443', 10, 2000);
    expect(await gw!.stop()).toBe(0);
    const chain = await readChain(receiptsPath, GATEWAY_ID);
    expect(chainProblems(chain, GATEWAY_ID, key.publicKey, key.keyId)).toEqual([]);
    expect(chain.tunnels.length).toBe(20);
    expect(chain.gaps.length).toBe(1);
    const lastBefore = before.receipts.at(-1)!.seq;
    expect(chain.gaps[0]).toMatchObject({
      reason: 'unclean_stop',
      seq: lastBefore + 1,
      lost_receipts: null,
      lost_bytes: 0,
    });
    // Never appended to a file of the previous run: the gap opens a file of its own.
    expect(chain.files.length).toBe(before.files.length + 1);
    expect(path.basename(chain.files.at(-1)!)).toBe(
      `receipts-${String(lastBefore + 1).padStart(12, '0')}.jsonl`,
    );
    expectedGaps.push({ reason: 'unclean_stop', afterSeq: lastBefore, lostBytes: 0 });
  });

  it('SIGKILL with a torn last line: the bytes are kept aside and the gap is torn_line', async () => {
    await echoTunnels(await start(), alpha, 'docstore:443', 10, 3000);
    await tunnelsOnDisk(30);
    await kill9();
    const before = await readChain(receiptsPath, GATEWAY_ID);
    // What a crash in the middle of a write leaves: the last record's line cut short, no newline.
    const last = before.files.at(-1)!;
    const text = await readFile(last);
    const lastLine = before.lines.at(-1)!;
    const keep = Buffer.byteLength(lastLine) >> 1;
    const size = text.length - Buffer.byteLength(lastLine) - 1 + keep;
    await truncate(last, size);
    const tornBytes = text.subarray(size - keep, size);
    const beforeRun = Date.now();

    await echoTunnels(await start(), alpha, 'docstore:443', 5, 4000);
    expect(await gw!.stop()).toBe(0);
    const logged = gw!.logs('receipts torn line kept aside');
    const torn = await tornFiles(receiptsPath, GATEWAY_ID);
    expect(torn.length, JSON.stringify(logged)).toBe(1);
    expect(path.basename(torn[0]!)).toMatch(new RegExp(`^${path.basename(last)}\\.torn-\\d+$`));
    expect(Number(torn[0]!.split('.torn-')[1])).toBeGreaterThanOrEqual(beforeRun - 1000);
    expect(await readFile(torn[0]!)).toEqual(tornBytes);

    const chain = await readChain(receiptsPath, GATEWAY_ID);
    expect(chainProblems(chain, GATEWAY_ID, key.publicKey, key.keyId)).toEqual([]);
    // The torn record is gone from the chain; the gap follows the last whole line.
    const lastWhole = before.receipts.at(-2)!.seq;
    expect(chain.gaps.length).toBe(2);
    expect(chain.gaps[1]).toMatchObject({ reason: 'torn_line', seq: lastWhole + 1, lost_bytes: keep });
    expectedGaps.push({ reason: 'torn_line', afterSeq: lastWhole, lostBytes: keep });
  });

  it('SIGKILL while tunnels close: whatever the crash left, the gap says it', async () => {
    const g = await start();
    const session = await connectH2(g.port, { ca: g.caPem, carrier: alpha });
    const streams = [];
    for (let i = 0; i < 50; i++) {
      const t = await openTunnel(session, 'docstore:443');
      expect(t.status).toBe(200);
      await roundTrip(t.stream, Buffer.alloc(100 + i, 0x61));
      streams.push(t.stream);
    }
    for (const s of streams) {
      s.end();
      s.resume();
    }
    await sleep(30);
    await kill9();
    await closeSession(session);
    for (const s of streams) await closed(s).catch(() => {});
    // The last file's tail decides which gap the next run must write.
    const chainDir = path.join(receiptsPath, GATEWAY_ID);
    const names = (await readdir(chainDir)).filter((n) => /^receipts-\d{12}\.jsonl$/.test(n)).sort();
    const tail = await readFile(path.join(chainDir, names.at(-1)!));
    const partial = tail.length - (tail.lastIndexOf(0x0a) + 1);

    await echoTunnels(await start(), alpha, 'docstore:443', 5, 6000);
    expect(await gw!.stop()).toBe(0);
    const chain = await readChain(receiptsPath, GATEWAY_ID);
    expect(chainProblems(chain, GATEWAY_ID, key.publicKey, key.keyId)).toEqual([]);
    expect(chain.gaps.length).toBe(3);
    const gap = chain.gaps[2]!;
    if (partial > 0) expect(gap).toMatchObject({ reason: 'torn_line', lost_bytes: partial });
    else expect(gap).toMatchObject({ reason: 'unclean_stop', lost_bytes: 0 });
    expectedGaps.push({ reason: gap.reason, afterSeq: gap.seq - 1, lostBytes: gap.lost_bytes });
  });

  it('receipts verify reports exactly those gaps', async () => {
    const chain = await readChain(receiptsPath, GATEWAY_ID);
    expect(
      chain.gaps.map((g) => ({ reason: g.reason, afterSeq: g.seq - 1, lostBytes: g.lost_bytes })),
    ).toEqual(expectedGaps);
    const r = await verifyCommand(chain.files, key.publicPath);
    const out = `${r.stdout}${r.stderr}`;
    const lines = reportedGaps(out);
    expect(lines.length, shown(r)).toBe(expectedGaps.length);
    expectedGaps.forEach((g, i) => {
      expect(lines[i], shown(r)).toContain(g.reason);
      expect(lines[i], shown(r)).toMatch(new RegExp(`\\b${g.afterSeq + 1}\\b`));
    });
    expect(r.code, shown(r)).toBe(GAP_EXIT);
  });
});

/** docs/contract.md "Receipts": the exit code of a chain whose only findings are named gaps. */
const GAP_EXIT = 0;
