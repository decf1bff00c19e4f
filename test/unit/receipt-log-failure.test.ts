// The writer when the disk will not take receipts (docs/contract.md "Receipts", Failure), on real
// files: failing state and metrics, retry every second, queued records written once it works again,
// records beyond max_queued dropped and named by a dropped gap. The directory is made unusable by
// putting a regular file in its place: chmod 0500 would not stop a root test run (CAP_DAC_OVERRIDE).
import { mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ReceiptFile } from '../../gateway/receipts/receipt-file.js';
import {
  chainProblems,
  details,
  fixturesRemovedAfterEach,
  publicPem,
  readAll,
  record,
  until,
} from './receipt-log-support.js';

const make = fixturesRemovedAfterEach();

const value = async (m: { get(): Promise<{ values: { value: number }[] }> }) =>
  (await m.get()).values[0]?.value ?? 0;

function block(dir: string): void {
  mkdirSync(dir.slice(0, dir.lastIndexOf('/')), { recursive: true });
  writeFileSync(dir, 'not a directory');
}

describe('receipt log failure state', () => {
  it('starts failing on an unusable directory, drops beyond max_queued, and resumes with a dropped gap first', async () => {
    const f = make();
    block(f.dir);
    const log = await f.open({ maxQueued: 3 });
    expect(log.failing).toMatch(/EEXIST|ENOTDIR/);
    expect(await value(f.metrics.receiptsFailing)).toBe(1);
    expect(f.logged.some((l) => l.level === 'error' && /cannot write/.test(l.msg))).toBe(true);
    for (let i = 1; i <= 5; i++) log.append(record(i));
    expect(await value(f.metrics.receiptsDropped)).toBe(2);
    // It keeps retrying, once a second, and counts each failure.
    await new Promise((r) => setTimeout(r, 1200));
    expect(await value(f.metrics.receiptWriteFailures)).toBeGreaterThanOrEqual(2);
    expect(log.failing).toBeDefined();

    rmSync(f.dir);
    await until(() => log.failing === undefined, 3000);
    expect(await value(f.metrics.receiptsFailing)).toBe(0);
    await log.close();
    const all = readAll(f.dir);
    expect(all[0]!.r).toMatchObject({ kind: 'gap', reason: 'dropped', lost_receipts: 2, seq: 1 });
    expect(details(all).slice(1)).toEqual(['record 1', 'record 2', 'record 3']);
    expect(all.at(-1)!.r).toMatchObject({ kind: 'checkpoint', cause: 'stop' });
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
  });

  it('a file that cannot be created at rotation fails the log; the chain resumes where it stopped', async () => {
    const f = make();
    const log = await f.open({ rotateBytes: 4096 });
    log.append(record(1));
    await until(() => readAll(f.dir).length === 1);
    // The open file is kept (its handle still writes); the next file cannot be created.
    const away = `${f.dir}.away`;
    renameSync(f.dir, away);
    block(f.dir);
    for (let i = 2; i <= 60; i++) log.append(record(i));
    await until(() => log.failing !== undefined, 3000);
    expect(await value(f.metrics.receiptsFailing)).toBe(1);

    rmSync(f.dir);
    renameSync(away, f.dir);
    await until(() => log.failing === undefined, 3000);
    await log.close();
    const all = readAll(f.dir);
    expect(readdirSync(f.dir).filter((n) => n.endsWith('.jsonl')).length).toBeGreaterThan(1);
    expect(details(all)).toEqual(Array.from({ length: 60 }, (_, i) => `record ${i + 1}`));
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
  });

  it('a new file whose directory cannot be synced is removed again, so the retry can create it', async () => {
    const f = make();
    mkdirSync(f.dir, { recursive: true });
    const eio = async () => {
      throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    };
    await expect(ReceiptFile.create(f.dir, 1, eio)).rejects.toThrow(/EIO/);
    expect(readdirSync(f.dir)).toEqual([]);
    const file = await ReceiptFile.create(f.dir, 1);
    await file.close();
    expect(readdirSync(f.dir)).toEqual(['receipts-000000000001.jsonl']);
  });

  it('close() while failing gives up after one attempt and says the next start will record an unclean stop', async () => {
    const f = make();
    block(f.dir);
    const log = await f.open();
    log.append(record(1));
    await log.close();
    expect(f.logged.some((l) => l.level === 'error' && /without the stop checkpoint/.test(l.msg))).toBe(true);
  });
});
