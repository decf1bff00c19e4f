// docs/contract.md "Receipts", verifier reasons: a valid chain passes; each tamper (edit a byte, rename a
// key, delete a line, swap two lines, truncate, replace the key) is named with its reason and place; any
// single-byte change to a valid file is reported (fast-check).
import { generateKeyPairSync } from 'node:crypto';
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type ChainReport,
  type Finding,
  formatFinding,
  type ReceiptFile,
  verifyReceiptChains,
} from '../../core/receipt-chain.js';
import { decodeReceipt, encodeReceipt, type GapReceipt, receiptHash } from '../../core/receipt-format.js';
import { chainLines, file, signCheckpoint, testKey, tunnelFields } from './fixtures/receipts.js';

const key = testKey();
const otherKey = testKey(
  generateKeyPairSync('ec', { namedCurve: 'P-256' })
    .privateKey.export({ type: 'pkcs8', format: 'pem' })
    .toString(),
);

/** Five tunnels, a checkpoint (seq 6), three tunnels, a stop checkpoint (seq 10). */
function validLines(): string[] {
  return chainLines(
    [
      tunnelFields(0),
      tunnelFields(1),
      tunnelFields(2),
      tunnelFields(3),
      tunnelFields(4),
      'checkpoint',
      tunnelFields(5),
      tunnelFields(6),
      tunnelFields(7),
      'stop',
    ],
    key,
  );
}

const problems = (r: ChainReport): Finding[] =>
  r.events.flatMap((e) => (e.type === 'problem' ? [e.finding] : []));
const summary = (r: ChainReport) => problems(r).map((f) => `${f.line}:${f.seq ?? '?'}:${f.reason}`);
const verify = (...files: ReceiptFile[]) => verifyReceiptChains(files, key);

describe('receipt chain verification', () => {
  it('a valid chain has no problem', () => {
    const r = verify(file('r.jsonl', validLines()));
    expect(problems(r)).toEqual([]);
    expect(r.lines).toBe(10);
    expect(r.chains).toBe(1);
    expect(r.records).toHaveLength(10);
  });

  it('files given out of order are chained by first seq; a later file continues the earlier one', () => {
    const lines = validLines();
    const r = verify(file('b.jsonl', lines.slice(6)), file('a.jsonl', lines.slice(0, 6)));
    expect(problems(r)).toEqual([]);
    expect(r.records.map((x) => x.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });

  it('a value edited in a record: chain_break at the next record, naming the edited one', () => {
    const lines = validLines();
    lines[2] = lines[2]!.replace('"bytes_up":102', '"bytes_up":999');
    const r = verify(file('r.jsonl', lines));
    expect(summary(r)).toEqual(['4:4:chain_break']);
    expect(formatFinding(problems(r)[0]!)).toMatch(
      /^r\.jsonl:4 seq 4: chain_break: prev [0-9a-f]{12}… is not the hash of r\.jsonl:3 \(seq 3\): that record's bytes were changed/,
    );
  });

  it('a key renamed: not_canonical on that line', () => {
    const lines = validLines();
    lines[1] = lines[1]!.replace('"bytes_up"', '"bytes_uq"');
    expect(summary(verify(file('r.jsonl', lines)))).toEqual(['2:2:not_canonical']);
  });

  it('a record that is JSON but reformatted (a space): not_canonical', () => {
    const lines = validLines();
    lines[1] = lines[1]!.replace('"seq":2,', '"seq": 2,');
    expect(summary(verify(file('r.jsonl', lines)))).toEqual(['2:2:not_canonical']);
  });

  it('a line that is not JSON: bad_json', () => {
    const lines = validLines();
    lines[1] = lines[1]!.slice(0, 40);
    expect(summary(verify(file('r.jsonl', lines)))).toEqual(['2:?:bad_json']);
  });

  it('a deleted line: seq_break naming the missing seq', () => {
    const lines = validLines();
    lines.splice(3, 1);
    const r = verify(file('r.jsonl', lines));
    expect(summary(r)).toEqual(['4:5:seq_break']);
    expect(problems(r)[0]!.detail).toMatch(/expected seq 4: seq 4 missing \(deleted\?\)/);
  });

  it('two lines swapped: seq_break at both', () => {
    const lines = validLines();
    [lines[2], lines[3]] = [lines[3]!, lines[2]!];
    expect(summary(verify(file('r.jsonl', lines)))).toEqual(['3:4:seq_break', '4:3:seq_break']);
  });

  it('a line duplicated: seq_break', () => {
    const lines = validLines();
    lines.splice(3, 0, lines[2]!);
    const r = verify(file('r.jsonl', lines));
    expect(summary(r)).toEqual(['4:3:seq_break']);
    expect(problems(r)[0]!.detail).toMatch(/seq 3 again or out of order/);
  });

  it('a record replaced by one with the right seq and prev: the checkpoint after it no longer verifies', () => {
    // Someone who rewrites a record and re-chains everything after it still cannot re-sign.
    const lines = validLines();
    const forged = chainLines([{ ...tunnelFields(7), bytes_up: 1 }], key, {
      from: { seq: 7, line: lines[6]! },
    })[0]!;
    lines[7] = forged;
    lines[8] = encodeReceipt({ ...decodeReceipt(lines[8]!), prev: receiptHash(forged) });
    lines[9] = encodeReceipt({ ...decodeReceipt(lines[9]!), prev: receiptHash(lines[8]!) });
    expect(summary(verify(file('r.jsonl', lines)))).toEqual([
      '10:10:bad_signature',
      '7:7:unsigned',
      '8:8:unsigned',
      '9:9:unsigned',
    ]);
  });

  it('truncated mid-line: torn_line, and the records after the last checkpoint are unsigned', () => {
    const lines = validLines();
    const bytes = Buffer.from(`${lines.join('\n')}\n`);
    const cut = bytes.length - 30;
    const r = verify({ name: 'r.jsonl', bytes: bytes.subarray(0, cut) });
    expect(summary(r)).toEqual(['10:?:torn_line', '7:7:unsigned', '8:8:unsigned', '9:9:unsigned']);
  });

  it('truncated at a line end: the tail after the last checkpoint is unsigned', () => {
    const lines = validLines().slice(0, 9);
    const r = verify(file('r.jsonl', lines));
    expect(summary(r)).toEqual(['7:7:unsigned', '8:8:unsigned', '9:9:unsigned']);
    expect(problems(r)[0]!.detail).toMatch(/after the last valid checkpoint \(r\.jsonl:6 \(seq 6\)\)/);
  });

  it('checkpoints signed by another key: unknown_key', () => {
    const lines = validLines().map((l) => {
      const r = decodeReceipt(l);
      if (r.kind !== 'checkpoint') return l;
      const { sig: _sig, ...rest } = r;
      return encodeReceipt(signCheckpoint({ ...rest, key_id: otherKey.keyId }, otherKey));
    });
    // Re-chain after each replaced checkpoint so that only the key is wrong.
    const rechained = rechain(lines);
    expect(summary(verify(file('r.jsonl', rechained)))).toEqual([
      '6:6:unknown_key',
      '10:10:unknown_key',
      ...[1, 2, 3, 4, 5, 7, 8, 9].map((n) => `${n}:${n}:unsigned`),
    ]);
  });

  it('key_id kept but signed by another key: bad_signature', () => {
    const lines = validLines();
    const last = decodeReceipt(lines[9]!);
    if (last.kind !== 'checkpoint') throw new Error('fixture');
    const { sig: _sig, ...rest } = last;
    lines[9] = encodeReceipt(signCheckpoint(rest, otherKey));
    expect(summary(verify(file('r.jsonl', lines)))).toEqual([
      '10:10:bad_signature',
      '7:7:unsigned',
      '8:8:unsigned',
      '9:9:unsigned',
    ]);
  });

  it('a file without a trailing newline: torn_line on its last line', () => {
    expect(summary(verify(file('r.jsonl', validLines(), false)))).toEqual([
      '10:10:torn_line',
      '7:7:unsigned',
      '8:8:unsigned',
      '9:9:unsigned',
    ]);
  });

  it('a missing middle file: seq_break at the next file', () => {
    const lines = validLines();
    const r = verify(file('a.jsonl', lines.slice(0, 3)), file('c.jsonl', lines.slice(6)));
    expect(summary(r)).toContain('1:7:seq_break');
  });

  it('gap records are named, not failures', () => {
    const gap: Omit<GapReceipt, 'seq' | 'prev' | 'gateway'> = {
      v: 1,
      kind: 'gap',
      at: '2026-03-01T11:00:00.000000Z',
      reason: 'unclean_stop',
      lost_receipts: null,
      lost_bytes: 0,
      detail: 'the previous run ended without its closing checkpoint',
    };
    const lines = chainLines([tunnelFields(0), 'checkpoint', gap as never, tunnelFields(1), 'stop'], key);
    const r = verify(file('r.jsonl', lines));
    expect(problems(r)).toEqual([]);
    const gaps = r.events.filter((e) => e.type === 'gap');
    expect(gaps).toHaveLength(1);
  });

  it('two gateways are two chains', () => {
    const a = chainLines([tunnelFields(0), 'stop'], key, { gateway: 'gw-a' });
    const b = chainLines([tunnelFields(1), 'stop'], key, { gateway: 'gw-b' });
    const r = verify(file('b.jsonl', b), file('a.jsonl', a));
    expect(problems(r)).toEqual([]);
    expect(r.chains).toBe(2);
  });

  it('a signature spelled with non-zero padding bits (same bytes) in the last record is reported', () => {
    // A DER signature of 72 bytes has no padding: sign again until the stop checkpoint's has some.
    let lines = validLines();
    const sigOf = (line: string) => /"sig":"([^"]+)"/.exec(line)![1]!;
    for (let tries = 0; tries < 50 && !sigOf(lines.at(-1)!).endsWith('='); tries++) lines = validLines();
    const last = lines.at(-1)!;
    const sig = sigOf(last);
    const bytes = Buffer.from(sig, 'base64');
    // The same bytes, another spelling: set the padding bits of the last character before '='.
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
    const pad = sig.endsWith('==') ? 2 : sig.endsWith('=') ? 1 : 0;
    expect(pad).toBeGreaterThan(0);
    const i = sig.length - pad - 1;
    const respelled = `${sig.slice(0, i)}${alphabet[alphabet.indexOf(sig[i]!) + 1]}${sig.slice(i + 1)}`;
    expect(Buffer.from(respelled, 'base64').equals(bytes)).toBe(true);
    lines[lines.length - 1] = last.replace(sig, respelled);
    expect(problems(verify(file('r.jsonl', lines))).length).toBeGreaterThan(0);
  });

  it('any single-byte change to a valid file is reported', () => {
    const bytes = Buffer.from(`${validLines().join('\n')}\n`);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: bytes.length - 1 }),
        fc.integer({ min: 1, max: 255 }),
        (at, delta) => {
          const changed = Buffer.from(bytes);
          changed[at] = (changed[at]! + delta) % 256;
          expect(problems(verify({ name: 'r.jsonl', bytes: changed })).length).toBeGreaterThan(0);
        },
      ),
      { numRuns: 400 },
    );
  });
});

/** Recompute prev and re-sign checkpoints with the key each one names, after an edit. */
function rechain(lines: string[]): string[] {
  const out: string[] = [];
  for (const l of lines) {
    const r = decodeReceipt(l);
    const prev = out.length === 0 ? r.prev : receiptHash(out[out.length - 1]!);
    if (r.kind === 'checkpoint') {
      const { sig: _sig, ...rest } = r;
      const signer = rest.key_id === key.keyId ? key : otherKey;
      out.push(encodeReceipt(signCheckpoint({ ...rest, prev }, signer)));
    } else {
      out.push(encodeReceipt({ ...r, prev }));
    }
  }
  return out;
}
