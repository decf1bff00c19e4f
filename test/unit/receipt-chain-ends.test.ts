// docs/contract.md "Receipts", Verifier, whole chains: a chain must start at GENESIS_PREV (open_head) and
// end in a stop checkpoint (open_end); a file with no record is empty_file and no record at all is
// no_records; --allow-open-head / --allow-open-tail accept those findings (still reported), the tail only
// after a valid checkpoint, so a chain no signature covers fails whatever the options.
import { describe, expect, it } from 'vitest';
import {
  type ChainReport,
  formatFinding,
  type ReceiptFile,
  type VerifyOptions,
  verifyReceiptChains,
} from '../../core/receipt-chain.js';
import { decodeReceipt, encodeReceipt } from '../../core/receipt-format.js';
import { chainLines, file, signCheckpoint, testKey, tunnelFields } from './fixtures/receipts.js';

const key = testKey();

const summary = (r: ChainReport) =>
  r.events.flatMap((e) =>
    e.type === 'problem' ? [`${e.finding.line}:${e.finding.seq ?? '?'}:${e.finding.reason}`] : [],
  );
const accepted = (r: ChainReport) =>
  r.events.flatMap((e) =>
    e.type === 'accepted' ? [`${e.finding.line}:${e.finding.seq}:${e.finding.reason} ${e.by}`] : [],
  );
const verify = (files: ReceiptFile[], options: VerifyOptions = {}) =>
  verifyReceiptChains(files, key, options);

/** Three tunnels, a count checkpoint (seq 4), two tunnels, a stop checkpoint (seq 7). */
const whole = () =>
  chainLines(
    [
      tunnelFields(0),
      tunnelFields(1),
      tunnelFields(2),
      'checkpoint',
      tunnelFields(3),
      tunnelFields(4),
      'stop',
    ],
    key,
  );

describe('whole chains', () => {
  it('a chain from genesis to a stop checkpoint has no finding', () => {
    const r = verify([file('r.jsonl', whole())]);
    expect(r.events).toEqual([]);
  });

  it('a file truncated to 0 bytes: empty_file, and with no record anywhere also no_records', () => {
    const empty = { name: 'r.jsonl', bytes: Buffer.alloc(0) };
    const r = verify([empty]);
    expect(summary(r)).toEqual(['0:?:empty_file', '0:?:no_records']);
    expect(r.events.map((e) => (e.type === 'problem' ? formatFinding(e.finding) : ''))).toEqual([
      'r.jsonl: empty_file: the file holds no record',
      'no_records: no receipt record in the 1 file(s) given: nothing was verified',
    ]);
    // Next to a whole chain an emptied file is still named, whatever the options.
    const both = verify([file('a.jsonl', whole()), empty], { allowOpenHead: true, allowOpenTail: true });
    expect(summary(both)).toEqual(['0:?:empty_file']);
    expect(summary(verify([]))).toEqual(['0:?:no_records']);
  });

  it('a chain that does not start at genesis: open_head, accepted by allowOpenHead naming the seq', () => {
    const slice = whole().slice(4);
    expect(summary(verify([file('r.jsonl', slice)]))).toEqual(['1:5:open_head']);
    const r = verify([file('r.jsonl', slice)], { allowOpenHead: true });
    expect(summary(r)).toEqual([]);
    expect(accepted(r)).toEqual(['1:5:open_head --allow-open-head']);
    const e = r.events[0]!;
    expect(e.type === 'accepted' && formatFinding(e.finding)).toBe(
      'r.jsonl:1 seq 5: open_head: the chain of gw-test starts at seq 5, not at GENESIS_PREV: the records before it were not given, or were removed',
    );
  });

  it('a chain that ends at a checkpoint other than stop: open_end, accepted by allowOpenTail', () => {
    const lines = whole().slice(0, 4);
    expect(summary(verify([file('r.jsonl', lines)]))).toEqual(['4:4:open_end']);
    const r = verify([file('r.jsonl', lines)], { allowOpenTail: true });
    expect(summary(r)).toEqual([]);
    expect(accepted(r)).toEqual(['4:4:open_end --allow-open-tail']);
    // A rotate checkpoint at the end: the next file was not given.
    const last = decodeReceipt(lines[3]!);
    if (last.kind !== 'checkpoint') throw new Error('fixture');
    const { sig: _sig, ...rest } = last;
    lines[3] = encodeReceipt(signCheckpoint({ ...rest, cause: 'rotate' }, key));
    const rotate = verify([file('r.jsonl', lines)]).events[0]!;
    expect(rotate.type === 'problem' && rotate.finding.detail).toMatch(
      /ends with a checkpoint of cause rotate, not stop: the next file was not given/,
    );
  });

  it('records after the last valid checkpoint: unsigned, accepted by allowOpenTail', () => {
    const lines = whole().slice(0, 6);
    expect(summary(verify([file('r.jsonl', lines)]))).toEqual(['5:5:unsigned', '6:6:unsigned']);
    const r = verify([file('r.jsonl', lines)], { allowOpenTail: true });
    expect(summary(r)).toEqual([]);
    expect(accepted(r)).toEqual(['5:5:unsigned --allow-open-tail', '6:6:unsigned --allow-open-tail']);
  });

  it('a forged chain with no checkpoint fails with allowOpenTail and allowOpenHead', () => {
    const forged = chainLines([tunnelFields(0), tunnelFields(1)], key);
    const r = verify([file('r.jsonl', forged)], { allowOpenHead: true, allowOpenTail: true });
    expect(summary(r)).toEqual(['1:1:unsigned', '2:2:unsigned']);
    expect(accepted(r)).toEqual([]);
    const first = r.events[0]!;
    expect(first.type === 'problem' && first.finding.detail).toBe(
      'no valid checkpoint in the chain (--allow-open-tail accepts only records after one): no signature covers this record',
    );
    // Nor when it claims to be a slice of a longer chain, or when its only checkpoint does not verify.
    const sliced = chainLines([tunnelFields(0), tunnelFields(1)], key, { from: { seq: 40, line: 'x' } });
    expect(summary(verify([file('s.jsonl', sliced)], { allowOpenHead: true, allowOpenTail: true }))).toEqual([
      '1:41:unsigned',
      '2:42:unsigned',
    ]);
    const badSig = chainLines([tunnelFields(0), 'checkpoint', tunnelFields(1)], key);
    const cp = decodeReceipt(badSig[1]!);
    if (cp.kind !== 'checkpoint') throw new Error('fixture');
    badSig[1] = encodeReceipt({
      ...cp,
      sig: signCheckpoint({ ...cp, at: '2026-03-01T10:03:00.000000Z' }, key).sig,
    });
    expect(summary(verify([file('b.jsonl', badSig)], { allowOpenTail: true }))).toEqual([
      '2:2:bad_signature',
      '3:3:chain_break',
      '1:1:unsigned',
      '3:3:unsigned',
    ]);
  });
});
