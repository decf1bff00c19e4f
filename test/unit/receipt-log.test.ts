// The receipt writer on real files (docs/contract.md "Receipts"): chaining across rotation, checkpoint
// cadence by count and by time, the stop checkpoint, and what a restart continues from.
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { CheckpointReceipt } from '../../core/receipt-format.js';
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

const causes = (f: Fixture) =>
  readAll(f.dir)
    .filter((x) => x.r.kind === 'checkpoint')
    .map((x) => (x.r as CheckpointReceipt).cause);

describe('receipt log', () => {
  it('chains every record, signs a checkpoint every checkpoint_receipts, and ends with a stop checkpoint', async () => {
    const f = make();
    const log = await f.open({ checkpointReceipts: 3 });
    for (let i = 1; i <= 7; i++) log.append(record(i));
    await log.close();
    const all = readAll(f.dir);
    expect(all.map((x) => `${x.r.seq}:${x.r.kind}`)).toEqual([
      '1:gap',
      '2:gap',
      '3:gap',
      '4:checkpoint',
      '5:gap',
      '6:gap',
      '7:gap',
      '8:checkpoint',
      '9:gap',
      '10:checkpoint',
    ]);
    expect(causes(f)).toEqual(['count', 'count', 'stop']);
    expect(details(all)).toEqual([1, 2, 3, 4, 5, 6, 7].map((i) => `record ${i}`));
    expect(all.every((x) => x.r.gateway === 'gw-test')).toBe(true);
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
    expect((await f.metrics.receiptsWritten.get()).values[0]?.value).toBe(10);
  });

  it('signs checkpoint_interval_ms after the first unsigned record when the count is not reached', async () => {
    const f = make();
    const log = await f.open({ checkpointReceipts: 1000, checkpointIntervalMs: 200 });
    log.append(record(1));
    await until(() => readAll(f.dir).length === 1);
    const started = Date.now();
    await until(() => causes(f).length === 1, 3000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(100);
    expect(causes(f)).toEqual(['interval']);
    // A checkpoint is not itself unsigned: nothing more follows while nothing more is appended.
    await new Promise((r) => setTimeout(r, 400));
    expect(readAll(f.dir).length).toBe(2);
    await log.close();
    expect(causes(f)).toEqual(['interval', 'stop']);
  });

  it('rotates by size: each closed file ends in a rotate checkpoint and the next file chains to it', async () => {
    const f = make();
    const log = await f.open({ rotateBytes: 4096, checkpointReceipts: 1000 });
    for (let i = 1; i <= 60; i++) log.append(record(i));
    await log.close();
    const files = readdirSync(f.dir).sort();
    expect(files.length).toBeGreaterThan(1);
    const all = readAll(f.dir);
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
    expect(details(all)).toEqual(Array.from({ length: 60 }, (_, i) => `record ${i + 1}`));
    for (const file of files) {
      const inFile = all.filter((x) => x.file === file);
      // Named by its first seq, and ends signed.
      expect(file).toBe(`receipts-${String(inFile[0]!.r.seq).padStart(12, '0')}.jsonl`);
      const last = inFile.at(-1)!.r as CheckpointReceipt;
      expect(last.kind).toBe('checkpoint');
      expect(last.cause).toBe(file === files.at(-1) ? 'stop' : 'rotate');
    }
  });

  it('rotates by age', async () => {
    const f = make();
    const log = await f.open({ rotateIntervalMs: 150 });
    log.append(record(1));
    await until(() => readAll(f.dir).length === 1);
    await new Promise((r) => setTimeout(r, 250));
    log.append(record(2));
    await log.close();
    expect(readdirSync(f.dir).sort()).toEqual(['receipts-000000000001.jsonl', 'receipts-000000000003.jsonl']);
    expect(causes(f)).toEqual(['rotate', 'stop']);
    expect(chainProblems(readAll(f.dir), publicPem(f.keyPath))).toEqual([]);
  });

  it('a clean restart continues the chain in a new file with no gap', async () => {
    const f = make();
    const first = await f.open();
    first.append(record(1));
    await first.close();
    const second = await f.open();
    second.append(record(2));
    await second.close();
    expect(readdirSync(f.dir).sort()).toEqual(['receipts-000000000001.jsonl', 'receipts-000000000003.jsonl']);
    const all = readAll(f.dir);
    expect(all.map((x) => x.r.kind)).toEqual(['gap', 'checkpoint', 'gap', 'checkpoint']);
    expect(details(all)).toEqual(['record 1', 'record 2']);
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
  });

  it('a restart after a run that never stopped starts with an unclean_stop gap', async () => {
    const f = make();
    const crashed = await f.open();
    crashed.append(record(1));
    crashed.append(record(2));
    await until(() => readAll(f.dir).length === 2);
    // No close(): as after kill -9, the last record on disk is not a stop checkpoint.
    const next = await f.open();
    await next.close();
    const all = readAll(f.dir);
    expect(all.map((x) => x.r.kind)).toEqual(['gap', 'gap', 'gap', 'checkpoint']);
    const gap = all[2]!.r;
    expect(gap).toMatchObject({
      kind: 'gap',
      reason: 'unclean_stop',
      lost_receipts: null,
      lost_bytes: 0,
      seq: 3,
    });
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
  });
});
