// The receipt writer's pacing and its fail-closed edges (docs/contract.md "Receipts"), on real files and
// a real PEM key: a signature (as a PKCS#11 C_Sign can) or a queue that never drains counts as failing,
// fsync keeps its interval under steady load, 512 waiting records flush at once, tunnels still open at
// the stop are named by a gap, a rotate checkpoint is written once even when its sync fails, and the
// last seq on disk is a metric. Disk errors are injected only where no real disk produces them on demand.
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { CheckpointReceipt } from '../../core/receipt-format.js';
import { GatewayReceipts } from '../../gateway/receipts/gateway-receipts.js';
import { ReceiptFile } from '../../gateway/receipts/receipt-file.js';
import { openReceiptSigner, type ReceiptSigner } from '../../gateway/receipts/receipt-signer.js';
import type { ReceiptsConfig } from '../../gateway/receipts/receipts-config.js';
import {
  chainProblems,
  details,
  type Fixture,
  fixturesRemovedAfterEach,
  publicPem,
  readAll,
  record,
  until,
} from './receipt-log-support.js';

const make = fixturesRemovedAfterEach();
afterEach(() => {
  vi.restoreAllMocks();
  vi.useRealTimers();
});

const value = async (m: { get(): Promise<{ values: { value: number; labels: object }[] }> }) =>
  (await m.get()).values[0]?.value ?? 0;

/** The fixture's real key, whose signatures wait until release() (a C_Sign that does not return). */
async function heldSigner(f: Fixture): Promise<{ signer: ReceiptSigner; release(): void }> {
  const real = await openReceiptSigner(f.keyPath);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  return {
    signer: { ...real, sign: async (m) => gate.then(() => real.sign(m)) },
    release: () => release(),
  };
}

const denying = { onFailure: 'deny', includeDenied: false } as ReceiptsConfig;

describe('receipt writer', () => {
  it('a signature that does not return within the bound fails the writer and refuses CONNECTs until it does', async () => {
    const f = make();
    const held = await heldSigner(f);
    const log = await f.open({ signer: held.signer, checkpointReceipts: 1, stalledAfterMs: 150 });
    const receipts = new GatewayReceipts(log, denying, f.logger);
    log.append(record(1));
    expect(receipts.refusing()).toBeUndefined();
    await until(() => receipts.refusing() !== undefined, 3000);
    expect(receipts.refusing()).toMatch(/receipt sign has not completed after 150 ms/);
    expect(await value(f.metrics.receiptsFailing)).toBe(1);
    expect(readAll(f.dir)).toEqual([]);

    held.release();
    await until(() => receipts.refusing() === undefined, 3000);
    expect(await value(f.metrics.receiptsFailing)).toBe(0);
    await receipts.close();
    const all = readAll(f.dir);
    expect(all.map((x) => x.r.kind)).toEqual(['gap', 'checkpoint', 'checkpoint']);
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
  });

  it('a queue at max_queued counts as failing; drained, it does not', async () => {
    const f = make();
    const held = await heldSigner(f);
    const log = await f.open({ signer: held.signer, checkpointReceipts: 1, maxQueued: 2 });
    const receipts = new GatewayReceipts(log, denying, f.logger);
    log.append(record(1));
    expect(receipts.refusing()).toBeUndefined();
    log.append(record(2));
    expect(receipts.refusing()).toMatch(/max_queued 2/);
    expect(await value(f.metrics.receiptsFailing)).toBe(1);
    // With on_failure = "continue" the same state is reported but nothing is refused.
    expect(
      new GatewayReceipts(log, { ...denying, onFailure: 'continue' }, f.logger).refusing(),
    ).toBeUndefined();

    held.release();
    await until(() => log.failing === undefined, 3000);
    expect(await value(f.metrics.receiptsFailing)).toBe(0);
    await receipts.close();
    expect(details(readAll(f.dir))).toEqual(['record 1', 'record 2']);
  });

  it('fsyncs every fsync_interval_ms even while the queue never runs dry', async () => {
    const f = make();
    const sync = ReceiptFile.prototype.sync;
    const recordsAtSync: number[] = [];
    vi.spyOn(ReceiptFile.prototype, 'sync').mockImplementation(function (this: ReceiptFile) {
      recordsAtSync.push(this.records);
      return sync.call(this);
    });
    const log = await f.open({ fsyncIntervalMs: 1 });
    const n = 40_000;
    // Written in batches of at most 4096 records, one after the other: the queue is never empty.
    for (let i = 1; i <= n; i++) log.append(record(i));
    const deadline = Date.now() + 20_000;
    while ((await value(f.metrics.receiptsWritten)) < n && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
    }
    await log.close();
    expect(details(readAll(f.dir)).length).toBe(n);
    expect(recordsAtSync.filter((r) => r < n).length).toBeGreaterThanOrEqual(2);
  });

  it('flushes at once when 512 records wait, not at the next 50 ms tick', async () => {
    const f = make();
    const log = await f.open();
    // Only timers are faked: the file system and the clock stay real.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    for (let i = 1; i <= 511; i++) log.append(record(i));
    vi.advanceTimersByTime(0);
    await new Promise((r) => setImmediate(r));
    expect(await value(f.metrics.receiptsWritten)).toBe(0);
    log.append(record(512));
    vi.advanceTimersByTime(0);
    const deadline = Date.now() + 5000;
    while ((await value(f.metrics.receiptsWritten)) < 512 && Date.now() < deadline) {
      await new Promise((r) => setImmediate(r));
    }
    expect(await value(f.metrics.receiptsWritten)).toBe(512);
    vi.useRealTimers();
    await log.close();
  });

  it('tunnels still open at close are named by a dropped gap before the stop; later appends are counted', async () => {
    const f = make();
    const log = await f.open();
    log.append(record(1));
    await log.close(3);
    const all = readAll(f.dir);
    expect(all.map((x) => `${x.r.seq}:${x.r.kind}`)).toEqual(['1:gap', '2:gap', '3:checkpoint']);
    expect(all[1]!.r).toMatchObject({ reason: 'dropped', lost_receipts: 3, lost_bytes: 0 });
    expect(details(all)[1]).toMatch(/^3 tunnels were still open when the gateway stopped/);
    expect((all[2]!.r as CheckpointReceipt).cause).toBe('stop');
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
    log.append(record(2));
    expect(await value(f.metrics.receiptsDropped)).toBe(1);
    // The metric an auditor compares with the end of the files.
    const lastSeq = (await f.metrics.receiptsLastSeq.get()).values;
    expect(lastSeq).toEqual([expect.objectContaining({ labels: { gateway: 'gw-test' }, value: 3 })]);
  });

  it('a failed sync after a rotate checkpoint is retried without writing another checkpoint', async () => {
    const f = make();
    const eio = Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    vi.spyOn(ReceiptFile.prototype, 'sync').mockRejectedValueOnce(eio);
    const log = await f.open({ rotateBytes: 4096, fsyncIntervalMs: 60_000 });
    for (let i = 1; i <= 60; i++) log.append(record(i));
    await until(() => log.failing !== undefined, 3000);
    expect(log.failing).toMatch(/EIO/);
    await until(() => log.failing === undefined, 3000);
    await log.close();
    const all = readAll(f.dir);
    const files = [...new Set(all.map((x) => x.file))];
    expect(files.length).toBeGreaterThan(1);
    for (const file of files) {
      const causes = all
        .filter((x) => x.file === file && x.r.kind === 'checkpoint')
        .map((x) => (x.r as CheckpointReceipt).cause);
      expect(causes).toEqual([file === files.at(-1) ? 'stop' : 'rotate']);
    }
    expect(details(all)).toEqual(Array.from({ length: 60 }, (_, i) => `record ${i + 1}`));
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
  });
});

describe('receipts at shutdown', () => {
  it('a writer that never finishes does not hold the shutdown past its bound', async () => {
    const f = make();
    const held = await heldSigner(f);
    const log = await f.open({ signer: held.signer, checkpointReceipts: 1 });
    const receipts = new GatewayReceipts(log, denying, f.logger, 200);
    log.append(record(1));
    const started = Date.now();
    await receipts.close();
    expect(Date.now() - started).toBeLessThan(5000);
    expect(f.logged.map((l) => l.msg)).toContain(
      'receipts: the writer did not finish; stopping without the stop checkpoint',
    );
    held.release();
  });
});
