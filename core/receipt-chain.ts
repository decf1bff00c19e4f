/**
 * Offline verification of receipt files (docs/contract.md "Receipts"): each line decodes, each chain's
 * seq counts up by one and each `prev` is the hash of the line before it, each checkpoint is signed by
 * the gateway's receipt key, and every record is covered by a later checkpoint. Pure: the caller reads
 * the files and the key. What a receipt says about the registry is checked elsewhere
 * (registry-cli/receipt-permissions.ts); this module finds what was deleted, reordered or edited.
 */
import type { KeyObject } from 'node:crypto';
import { verifyDerSignature } from './ecdsa.js';
import {
  checkpointSignedBytes,
  decodeReceipt,
  type GapReceipt,
  GENESIS_PREV,
  type Receipt,
  ReceiptFormatError,
  receiptHash,
} from './receipt-format.js';

/** Every reason the verifier reports, with a stable name (docs/contract.md "Receipts"). */
export const VERIFY_REASONS = [
  'bad_json',
  'not_canonical',
  'seq_break',
  'chain_break',
  'bad_signature',
  'unknown_key',
  'unsigned',
  'torn_line',
  'permission_missing',
  'permission_mismatch',
  'permission_signature_invalid',
  'not_authorized_then',
] as const;
export type VerifyReason = (typeof VERIFY_REASONS)[number];

export type ReceiptFile = { readonly name: string; readonly bytes: Buffer };

/** Where a line is: file name, 1-based line number, and its seq when one can be read. */
export type Location = { readonly file: string; readonly line: number; readonly seq: number | null };

export type Located<R extends Receipt = Receipt> = Location & { readonly raw: string; readonly receipt: R };

export type Finding = Location & { readonly reason: VerifyReason; readonly detail: string };

/** In the order the walk met them, so a report reads top to bottom like the files. */
export type ChainEvent =
  | { readonly type: 'problem'; readonly finding: Finding }
  | { readonly type: 'gap'; readonly gap: Located<GapReceipt> }
  | { readonly type: 'note'; readonly text: string };

export type ChainReport = {
  readonly events: readonly ChainEvent[];
  /** Every line that decoded, in chain order: what a registry check looks at. */
  readonly records: readonly Located[];
  /** Complete lines read (decoded or not). */
  readonly lines: number;
  readonly chains: number;
};

/** The gateway's receipt key: `key_id` (hex SHA-256 of its SPKI DER) and the key to verify with. */
export type ReceiptKey = { readonly keyId: string; readonly publicKey: KeyObject };

type Line = Location & { readonly raw: string; readonly receipt: Receipt | null; readonly bad?: Finding };

type ParsedFile = { readonly name: string; readonly lines: readonly Line[]; readonly torn: Finding | null };

export function verifyReceiptChains(files: readonly ReceiptFile[], key: ReceiptKey): ChainReport {
  const events: ChainEvent[] = [];
  const records: Located[] = [];
  const parsed = files.map(parseFile);
  let lines = 0;

  // A file joins the chain of its first record's gateway; within a chain files go by first seq.
  const chains = new Map<string, ParsedFile[]>();
  const orphans: ParsedFile[] = [];
  for (const f of parsed) {
    lines += f.lines.length;
    const first = f.lines.find((l) => l.receipt !== null)?.receipt;
    if (first == null) orphans.push(f);
    else chains.set(first.gateway, [...(chains.get(first.gateway) ?? []), f]);
  }
  const firstSeq = (f: ParsedFile) => f.lines.find((l) => l.receipt !== null)?.receipt?.seq ?? 0;
  for (const gateway of [...chains.keys()].sort()) {
    const chainFiles = chains
      .get(gateway)!
      .sort((a, b) => firstSeq(a) - firstSeq(b) || a.name.localeCompare(b.name));
    walkChain(gateway, chainFiles, key, events, records);
  }
  for (const f of orphans) {
    for (const l of f.lines) if (l.bad) events.push({ type: 'problem', finding: l.bad });
    if (f.torn) events.push({ type: 'problem', finding: f.torn });
  }
  return { events, records, lines, chains: chains.size };
}

type Previous = { readonly raw: string; readonly at: Location; readonly bad: boolean };

function walkChain(
  gateway: string,
  files: readonly ParsedFile[],
  key: ReceiptKey,
  events: ChainEvent[],
  records: Located[],
): void {
  const problem = (at: Location, reason: VerifyReason, detail: string) =>
    events.push({ type: 'problem', finding: { ...at, reason, detail } });
  // Each seq's line as read (the last one, for a duplicate): a record's prev must be the hash of its
  // predecessor's, wherever that line stands, so a swap names the swapped lines and not the ones after.
  const bySeq = new Map<number, Previous>();
  let maxSeq: number | null = null;
  let lastCheckpoint: Location | null = null;
  let last: Line | null = null;
  // Records no valid checkpoint has vouched for yet.
  let uncovered: Line[] = [];
  for (const file of files) {
    for (const line of file.lines) {
      const r = line.receipt;
      if (r === null) {
        events.push({ type: 'problem', finding: line.bad! });
        // An unreadable seq most likely took the next number: guessing so reports only this line.
        const seq = line.seq ?? (maxSeq === null ? null : maxSeq + 1);
        if (seq !== null) {
          bySeq.set(seq, { raw: line.raw, at: { ...line, seq }, bad: true });
          maxSeq = Math.max(maxSeq ?? seq, seq);
        }
        continue;
      }
      records.push({ file: line.file, line: line.line, seq: r.seq, raw: line.raw, receipt: r });
      if (maxSeq === null) {
        if (r.prev !== GENESIS_PREV) {
          events.push({
            type: 'note',
            text: `${gateway}: chain starts at seq ${r.seq} (${line.file}:${line.line}); the records before it were not given`,
          });
        } else if (r.seq !== 1) {
          problem(
            line,
            'seq_break',
            `the chain's first record (prev ${GENESIS_PREV.slice(0, 8)}…) has seq ${r.seq}, not 1`,
          );
        }
      } else if (r.seq !== maxSeq + 1) {
        const expected = maxSeq + 1;
        problem(
          line,
          'seq_break',
          r.seq > expected
            ? `expected seq ${expected}: ${missing(expected, r.seq - 1)} missing (deleted?)`
            : `expected seq ${expected}: seq ${r.seq} again or out of order (lines duplicated or reordered)`,
        );
      }
      const before = bySeq.get(r.seq - 1);
      if (before !== undefined && !before.bad && r.prev !== receiptHash(before.raw)) {
        problem(
          line,
          'chain_break',
          `prev ${r.prev.slice(0, 12)}… is not the hash of ${where(before.at)}: that record's bytes were changed, or it was replaced`,
        );
      }
      if (r.gateway !== gateway)
        problem(line, 'chain_break', `gateway ${r.gateway} in a file of chain ${gateway}`);
      if (r.kind === 'checkpoint') {
        const { sig, ...signed } = r;
        if (r.key_id !== key.keyId) {
          problem(
            line,
            'unknown_key',
            `checkpoint signed by key_id ${r.key_id}, not the given key ${key.keyId}`,
          );
        } else if (
          !verifyDerSignature(key.publicKey, checkpointSignedBytes(signed), Buffer.from(sig, 'base64'))
        ) {
          problem(line, 'bad_signature', `checkpoint signature does not verify with key ${key.keyId}`);
        } else {
          uncovered = [];
          lastCheckpoint = line;
        }
      } else {
        uncovered.push(line);
      }
      if (r.kind === 'gap') events.push({ type: 'gap', gap: { ...line, seq: r.seq, receipt: r } });
      bySeq.set(r.seq, { raw: line.raw, at: line, bad: false });
      last = line;
      maxSeq = Math.max(maxSeq ?? r.seq, r.seq);
    }
    if (file.torn) events.push({ type: 'problem', finding: file.torn });
  }
  const after =
    lastCheckpoint === null
      ? 'no valid checkpoint in the chain'
      : `after the last valid checkpoint (${where(lastCheckpoint)})`;
  for (const line of uncovered) problem(line, 'unsigned', `${after}: no signature covers this record`);
  // Records cut off after a checkpoint leave nothing to detect in the file itself: say how the chain ends
  // when it is not a clean stop, so a reader knows the tail is the gateway's word only up to here.
  const end = last?.receipt;
  if (last !== null && end?.kind === 'checkpoint' && end.cause !== 'stop' && uncovered.length === 0) {
    events.push({
      type: 'note',
      text:
        `${gateway}: chain ends at seq ${end.seq} (${last.file}:${last.line}) with a checkpoint of cause ${end.cause}, ` +
        `not stop: ${end.cause === 'rotate' ? 'the next file was not given' : 'the gateway was still writing'}, or records after it were removed`,
    });
  }
}

function missing(from: number, to: number): string {
  return from === to ? `seq ${from}` : `seq ${from}..${to} (${to - from + 1} records)`;
}

function where(at: Location): string {
  return `${at.file}:${at.line}${at.seq === null ? '' : ` (seq ${at.seq})`}`;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

function parseFile(file: ReceiptFile): ParsedFile {
  const lines: Line[] = [];
  const b = file.bytes;
  let start = 0;
  for (let i = 0; i < b.length; i++) {
    if (b[i] !== 0x0a) continue;
    lines.push(parseLine(file.name, lines.length + 1, b.subarray(start, i)));
    start = i + 1;
  }
  let torn: Finding | null = null;
  if (start < b.length) {
    const rest = parseLine(file.name, lines.length + 1, b.subarray(start));
    torn = {
      file: file.name,
      line: lines.length + 1,
      seq: rest.seq,
      reason: 'torn_line',
      detail: `the file ends in ${b.length - start} byte(s) without a newline (an incomplete write, or a truncated file)`,
    };
  }
  return { name: file.name, lines, torn };
}

function parseLine(file: string, line: number, bytes: Buffer): Line {
  const bad = (seq: number | null, reason: VerifyReason, detail: string, raw: string): Line => ({
    file,
    line,
    seq,
    raw,
    receipt: null,
    bad: { file, line, seq, reason, detail },
  });
  let raw: string;
  try {
    raw = UTF8.decode(bytes);
  } catch {
    return bad(null, 'bad_json', 'not UTF-8', bytes.toString('latin1'));
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    return bad(null, 'bad_json', (err as Error).message, raw);
  }
  const seqField = (parsed as { seq?: unknown } | null)?.seq;
  const seq = Number.isSafeInteger(seqField) ? (seqField as number) : null;
  try {
    const receipt = decodeReceipt(raw);
    return { file, line, seq: receipt.seq, raw, receipt };
  } catch (err) {
    if (!(err instanceof ReceiptFormatError)) throw err;
    return bad(seq, 'not_canonical', err.message, raw);
  }
}

/** `<file>:<line> seq <n>: <reason>: <detail>`, the verifier's line for a finding. */
export function formatFinding(f: Finding): string {
  return `${f.file}:${f.line} seq ${f.seq ?? '?'}: ${f.reason}: ${f.detail}`;
}

/** The verifier's line for a gap record: named, not a failure. */
export function formatGap(g: Located<GapReceipt>): string {
  const r = g.receipt;
  const lost = r.lost_receipts === null ? 'an unknown number of receipts' : `${r.lost_receipts} receipt(s)`;
  return `${g.file}:${g.line} seq ${r.seq}: gap: ${r.reason} at ${r.at}: ${lost} lost, ${r.lost_bytes} byte(s) set aside: ${r.detail}`;
}
