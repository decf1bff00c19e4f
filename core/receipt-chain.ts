/**
 * Offline verification of receipt files (docs/contract.md "Receipts"): each line decodes, each chain's
 * seq counts up by one and each `prev` is the hash of the line before it, each checkpoint is signed by
 * the gateway's receipt key, every record is covered by a later checkpoint, and each chain is whole: it
 * starts at GENESIS_PREV and ends in a `stop` checkpoint, unless the auditor allows an open head or tail
 * (VerifyOptions). Pure: the caller reads the files and the key. What a receipt says about the registry is checked elsewhere
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
  'open_head',
  'open_end',
  'empty_file',
  'no_records',
  'permission_missing',
  'permission_mismatch',
  'permission_signature_invalid',
  'not_authorized_then',
] as const;
export type VerifyReason = (typeof VERIFY_REASONS)[number];

export type ReceiptFile = { readonly name: string; readonly bytes: Buffer };

/**
 * Where a line is: file name, 1-based line number, and its seq when one can be read. Line 0 is the file
 * as a whole; file '' the files given as a whole.
 */
export type Location = { readonly file: string; readonly line: number; readonly seq: number | null };

export type Located<R extends Receipt = Receipt> = Location & { readonly raw: string; readonly receipt: R };

export type Finding = Location & { readonly reason: VerifyReason; readonly detail: string };

/** The command-line option that accepts a finding instead of failing on it. */
export type Allowance = '--allow-open-head' | '--allow-open-tail';

/** What an auditor of a slice of the files, or of a running gateway, accepts (docs/contract.md "Verifier"). */
export type VerifyOptions = {
  /** A chain may start after GENESIS_PREV: its earlier files were not given. */
  readonly allowOpenHead?: boolean;
  /**
   * Records after the last valid checkpoint of a chain that has one, and a chain that ends at a checkpoint
   * other than `stop`: the gateway is still writing.
   */
  readonly allowOpenTail?: boolean;
};

/** In the order the walk met them, so a report reads top to bottom like the files. */
export type ChainEvent =
  | { readonly type: 'problem'; readonly finding: Finding }
  | { readonly type: 'accepted'; readonly finding: Finding; readonly by: Allowance }
  | { readonly type: 'gap'; readonly gap: Located<GapReceipt> };

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

export function verifyReceiptChains(
  files: readonly ReceiptFile[],
  key: ReceiptKey,
  options: VerifyOptions = {},
): ChainReport {
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
    walkChain(gateway, chainFiles, key, options, events, records);
  }
  const problem = (finding: Finding) => events.push({ type: 'problem', finding });
  for (const f of orphans) {
    for (const l of f.lines) if (l.bad) problem(l.bad);
    if (f.torn) problem(f.torn);
    // Truncating a file to nothing must not read as "nothing wrong".
    if (f.lines.length === 0 && f.torn === null)
      problem({ file: f.name, line: 0, seq: null, reason: 'empty_file', detail: 'the file holds no record' });
  }
  if (records.length === 0) {
    problem({
      file: '',
      line: 0,
      seq: null,
      reason: 'no_records',
      detail: `no receipt record in the ${files.length} file(s) given: nothing was verified`,
    });
  }
  return { events, records, lines, chains: chains.size };
}

type Previous = { readonly raw: string; readonly at: Location; readonly bad: boolean };

function walkChain(
  gateway: string,
  files: readonly ParsedFile[],
  key: ReceiptKey,
  options: VerifyOptions,
  events: ChainEvent[],
  records: Located[],
): void {
  const problem = (at: Location, reason: VerifyReason, detail: string, acceptedBy?: Allowance) => {
    const finding = { ...at, reason, detail };
    events.push(
      acceptedBy === undefined ? { type: 'problem', finding } : { type: 'accepted', finding, by: acceptedBy },
    );
  };
  // Each seq's line as read (the last one, for a duplicate): a record's prev must be the hash of its
  // predecessor's, wherever that line stands, so a swap names the swapped lines and not the ones after.
  const bySeq = new Map<number, Previous>();
  let maxSeq: number | null = null;
  let lastCheckpoint: Line | null = null;
  // The chain's last line, decoded or not: how the chain ends.
  let last: Line | null = null;
  // Records no valid checkpoint has vouched for yet.
  let uncovered: Line[] = [];
  for (const file of files) {
    for (const line of file.lines) {
      const r = line.receipt;
      last = line;
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
          problem(
            line,
            'open_head',
            `the chain of ${gateway} starts at seq ${r.seq}, not at GENESIS_PREV: the records before it were not given, or were removed`,
            options.allowOpenHead === true ? '--allow-open-head' : undefined,
          );
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
      maxSeq = Math.max(maxSeq ?? r.seq, r.seq);
    }
    if (file.torn) events.push({ type: 'problem', finding: file.torn });
  }
  // Only records after a valid checkpoint can be a tail still being written: a chain no signature
  // vouches for at all is the gateway's word nowhere, whatever the auditor allows.
  const openTail = lastCheckpoint !== null && options.allowOpenTail === true;
  const after =
    lastCheckpoint === null
      ? `no valid checkpoint in the chain${options.allowOpenTail === true ? ' (--allow-open-tail accepts only records after one)' : ''}`
      : `after the last valid checkpoint (${where(lastCheckpoint)})`;
  for (const line of uncovered)
    problem(
      line,
      'unsigned',
      `${after}: no signature covers this record`,
      openTail ? '--allow-open-tail' : undefined,
    );
  // Records cut off after a checkpoint leave nothing to detect in the file itself: a chain is whole only
  // when it ends in a clean stop (whole later runs removed after one still cannot be seen: the contract
  // tells the auditor to compare the last seq with the gateway's own).
  const end = last?.receipt;
  if (last !== null && last === lastCheckpoint && end?.kind === 'checkpoint' && end.cause !== 'stop') {
    problem(
      last,
      'open_end',
      `the chain of ${gateway} ends with a checkpoint of cause ${end.cause}, not stop: ` +
        `${end.cause === 'rotate' ? 'the next file was not given' : 'the gateway was still writing'}, or records after it were removed`,
      options.allowOpenTail === true ? '--allow-open-tail' : undefined,
    );
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

/** `<file>:<line> seq <n>: <reason>: <detail>` (`<file>: …` for a whole file), the verifier's line for a finding. */
export function formatFinding(f: Finding): string {
  if (f.line === 0) return `${f.file === '' ? '' : `${f.file}: `}${f.reason}: ${f.detail}`;
  return `${f.file}:${f.line} seq ${f.seq ?? '?'}: ${f.reason}: ${f.detail}`;
}

/** The verifier's line for a gap record: named, not a failure. */
export function formatGap(g: Located<GapReceipt>): string {
  const r = g.receipt;
  const lost = r.lost_receipts === null ? 'an unknown number of receipts' : `${r.lost_receipts} receipt(s)`;
  return `${g.file}:${g.line} seq ${r.seq}: gap: ${r.reason} at ${r.at}: ${lost} lost, ${r.lost_bytes} byte(s) set aside: ${r.detail}`;
}
