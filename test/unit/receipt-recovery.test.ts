// What a restart continues from (docs/contract.md "Receipts", Restart), on real files: a torn tail is
// moved aside and named by a torn_line gap, the chain continues from the last whole record (checked with
// the real decoder), an empty newest file counts as an unclean stop, and a failed aside copy leaves nothing.
import { appendFileSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { GapReceipt } from '../../core/receipt-format.js';
import { recoverChain } from '../../gateway/receipts/receipt-recovery.js';
import {
  chainProblems,
  details,
  type Fixture,
  fixturesRemovedAfterEach,
  publicPem,
  readAll,
  record,
} from './receipt-log-support.js';

const make = fixturesRemovedAfterEach();

/** A run that wrote `n` records and stopped cleanly; returns the file's path. */
async function cleanRun(f: Fixture, n: number): Promise<string> {
  const log = await f.open();
  for (let i = 1; i <= n; i++) log.append(record(i));
  await log.close();
  const files = readdirSync(f.dir)
    .filter((x) => x.endsWith('.jsonl'))
    .sort();
  return path.join(f.dir, files.at(-1)!);
}

const torn = (f: Fixture) => readdirSync(f.dir).filter((n) => n.includes('.torn-'));

describe('receipt recovery', () => {
  it('a partial last line is moved aside, the file cut back, and the next run opens with a torn_line gap', async () => {
    const f = make();
    const file = await cleanRun(f, 3);
    const whole = readFileSync(file);
    // A crash in the middle of a write: half of a line, no newline.
    const partial = Buffer.from('{"v":1,"kind":"tunnel","gateway":"gw-te');
    appendFileSync(file, partial);
    const before = Date.now();

    const next = await f.open();
    next.append(record(4));
    await next.close();

    expect(readFileSync(file)).toEqual(whole);
    const aside = torn(f);
    expect(aside.length).toBe(1);
    expect(aside[0]).toMatch(new RegExp(`^${path.basename(file)}\\.torn-\\d+$`));
    expect(Number(aside[0]!.split('.torn-')[1])).toBeGreaterThanOrEqual(before);
    expect(readFileSync(path.join(f.dir, aside[0]!))).toEqual(partial);
    expect(f.logged.some((l) => l.level === 'error' && /torn/.test(l.msg))).toBe(true);

    const all = readAll(f.dir);
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
    const gap = all[4]!.r as GapReceipt;
    expect(gap).toMatchObject({
      kind: 'gap',
      reason: 'torn_line',
      lost_bytes: partial.length,
      lost_receipts: null,
      seq: 5,
    });
    expect(all[3]!.r).toMatchObject({ kind: 'checkpoint', cause: 'stop', seq: 4 });
    expect(details(all).slice(-1)).toEqual(['record 4']);
  });

  it('a whole last line that does not decode goes aside too (a page lost under it)', async () => {
    const f = make();
    const file = await cleanRun(f, 2);
    const whole = readFileSync(file);
    const garbage = Buffer.concat([Buffer.alloc(40, 0), Buffer.from('\n')]);
    appendFileSync(file, garbage);
    const found = await recoverChain(f.dir);
    expect(found.gap).toMatchObject({ reason: 'torn_line', lostBytes: garbage.length });
    expect(found.lastSeq).toBe(3);
    expect(readFileSync(file)).toEqual(whole);
  });

  it('a torn tail whose aside copy cannot be written (ENOSPC) leaves no partial copy; the retry succeeds', async () => {
    const f = make();
    const file = await cleanRun(f, 2);
    const partial = Buffer.from('{"v":1,"kind":"gap","gateway":"gw-test","seq":4,');
    appendFileSync(file, partial);
    const withTail = readFileSync(file);
    // The disk fills up half-way through the copy.
    const full = async (handle: FileHandle, bytes: Buffer) => {
      await handle.write(bytes, 0, 10, 0);
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    };
    await expect(recoverChain(f.dir, () => 1000, full)).rejects.toThrow(/ENOSPC/);
    expect(torn(f)).toEqual([]);
    expect(readFileSync(file)).toEqual(withTail);
    await expect(recoverChain(f.dir, () => 2000, full)).rejects.toThrow(/ENOSPC/);
    expect(torn(f)).toEqual([]);
    const found = await recoverChain(f.dir, () => 3000);
    expect(found.gap).toMatchObject({ reason: 'torn_line', lostBytes: partial.length });
    expect(torn(f)).toEqual([`${path.basename(file)}.torn-3000`]);
    expect(readFileSync(path.join(f.dir, torn(f)[0]!))).toEqual(partial);
  });

  it('a stop checkpoint cut in half: the chain continues from the record before it', async () => {
    const f = make();
    const file = await cleanRun(f, 2);
    const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    const lastLength = Buffer.byteLength(lines.at(-1)!) + 1;
    truncateSync(file, statSync(file).size - Math.floor(lastLength / 2));
    const found = await recoverChain(f.dir);
    // The stop checkpoint is gone: seq 2 is the last whole record, and the gap is torn_line.
    expect(found.lastSeq).toBe(2);
    expect(found.gap?.reason).toBe('torn_line');
    const next = await f.open();
    await next.close();
    expect(chainProblems(readAll(f.dir), publicPem(f.keyPath))).toEqual([]);
  });

  it('an empty newest file (a run that died before its first write) is removed and counts as an unclean stop', async () => {
    const f = make();
    await cleanRun(f, 1);
    const empty = path.join(f.dir, 'receipts-000000000003.jsonl');
    writeFileSync(empty, '');
    const next = await f.open();
    await next.close();
    const all = readAll(f.dir);
    expect(all.map((x) => x.r.kind)).toEqual(['gap', 'checkpoint', 'gap', 'checkpoint']);
    expect(all[2]!.r).toMatchObject({ reason: 'unclean_stop', seq: 3, lost_receipts: null });
    expect(all[2]!.file).toBe('receipts-000000000003.jsonl');
    expect(chainProblems(all, publicPem(f.keyPath))).toEqual([]);
  });

  it('an empty directory starts a new chain at seq 1 from GENESIS_PREV with no gap', async () => {
    const f = make();
    const log = await f.open();
    await log.close();
    const all = readAll(f.dir);
    expect(all.map((x) => `${x.r.seq}:${x.r.kind}`)).toEqual(['1:checkpoint']);
    expect(all[0]!.r.prev).toBe('0'.repeat(64));
  });
});
