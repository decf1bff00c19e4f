/**
 * Where a gateway id's chain stands on disk when the writer starts (docs/contract.md "Receipts",
 * restart): the last complete record of the newest file is what the new run chains to. A torn tail
 * (bytes after the last newline, or last lines that do not decode) is moved aside to
 * `<file>.torn-<unix ms>` and the file truncated, so every file on disk holds only whole records; the
 * new run then opens with a gap saying what was lost (torn_line), or, when the previous run did not end
 * with its stop checkpoint, that receipts of tunnels open then are missing (unclean_stop).
 */
import { type FileHandle, open, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { decodeReceipt, GENESIS_PREV, type Receipt, receiptHash } from '../../core/receipt-format.js';

const FILE = /^receipts-(\d{12})\.jsonl$/;

/** `receipts-<first seq, 12 digits>.jsonl` */
export function receiptFileName(firstSeq: number): string {
  return `receipts-${String(firstSeq).padStart(12, '0')}.jsonl`;
}

/** The gap the new run starts with, without its chain fields. */
export type RecoveryGap = {
  readonly reason: 'unclean_stop' | 'torn_line';
  readonly lostBytes: number;
  readonly detail: string;
};

export type ChainPosition = {
  /** seq of the last record on disk, 0 when there is none. */
  readonly lastSeq: number;
  /** receiptHash of the last record's line, GENESIS_PREV when there is none. */
  readonly prev: string;
  readonly gap: RecoveryGap | undefined;
  /** Set when a torn tail was moved aside: for the log. */
  readonly torn?: { readonly file: string; readonly aside: string; readonly bytes: number } | undefined;
};

/** Receipt files of one gateway id's directory, oldest first. */
export async function receiptFiles(dir: string): Promise<string[]> {
  const names = (await readdir(dir)).filter((n) => FILE.test(n));
  return names.sort();
}

/** Writes the bytes of a new file through its handle (tests make it fail half-way). */
export type WriteAside = (handle: FileHandle, bytes: Buffer) => Promise<void>;

/**
 * Reads (and repairs, as above) the newest receipt file of `dir`. Empty files, which a run that stopped
 * before its first write leaves, are removed: they hold nothing, and their name is the next file's.
 */
export async function recoverChain(
  dir: string,
  now: () => number = Date.now,
  write: WriteAside = (handle, bytes) => handle.writeFile(bytes),
): Promise<ChainPosition> {
  const files = await receiptFiles(dir);
  let torn: ChainPosition['torn'];
  // A run creates its file at start and ends it with a stop checkpoint: an empty newest file is a run
  // that died before its first write (its receipts, if any, are lost: an unclean stop).
  let emptyRun: string | undefined;
  while (files.length > 0) {
    const name = files.pop() as string;
    const file = path.join(dir, name);
    const bytes = await readFile(file);
    const keep = completeLength(bytes);
    if (keep < bytes.length) {
      const aside = `${file}.torn-${now()}`;
      await writeAside(aside, bytes.subarray(keep), write);
      const handle = await open(file, 'r+');
      try {
        await handle.truncate(keep);
        await handle.sync();
      } finally {
        await handle.close();
      }
      // Only the newest file can be torn by a crash; what an earlier file lost is not this run's to say.
      torn ??= { file, aside, bytes: bytes.length - keep };
    }
    if (keep === 0) {
      if (bytes.length === 0) emptyRun ??= name;
      await rm(file);
      continue;
    }
    const lastLine = bytes.subarray(lastLineStart(bytes, keep), keep - 1).toString('utf8');
    const last = decodeReceipt(lastLine);
    return { lastSeq: last.seq, prev: receiptHash(lastLine), gap: gapFor(last, torn, emptyRun), torn };
  }
  return { lastSeq: 0, prev: GENESIS_PREV, gap: gapFor(undefined, torn, emptyRun), torn };
}

function gapFor(
  last: Receipt | undefined,
  torn: ChainPosition['torn'],
  emptyRun: string | undefined,
): RecoveryGap | undefined {
  if (torn !== undefined) {
    return {
      reason: 'torn_line',
      lostBytes: torn.bytes,
      detail: `${torn.bytes} bytes after the last complete record of ${path.basename(torn.file)} moved aside to ${path.basename(torn.aside)}`,
    };
  }
  if (emptyRun !== undefined) {
    return {
      reason: 'unclean_stop',
      lostBytes: 0,
      detail: `the previous run ended before its first write (${emptyRun} was empty); receipts of its tunnels were not written`,
    };
  }
  if (last !== undefined && !(last.kind === 'checkpoint' && last.cause === 'stop')) {
    return {
      reason: 'unclean_stop',
      lostBytes: 0,
      detail: `the previous run ended after seq ${last.seq} without its stop checkpoint; receipts of tunnels open then were not written`,
    };
  }
  return undefined;
}

/**
 * Creates `file` holding `bytes`. When the write fails (ENOSPC…) the partial file is removed: the retry a
 * second later picks a new name, and would otherwise leave one more empty or cut file each time.
 */
async function writeAside(file: string, bytes: Buffer, write: WriteAside): Promise<void> {
  const handle = await open(file, 'wx', 0o640);
  try {
    await write(handle, bytes);
    // On disk before the original is truncated: a crash in between must not lose the bytes from both.
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => {});
    await rm(file, { force: true });
    throw err;
  }
  await handle.close();
}

/** Length of the prefix made of whole, decodable lines (each ending in a newline). */
function completeLength(bytes: Buffer): number {
  let end = bytes.length;
  // Bytes after the last newline are a line the crash cut short.
  while (end > 0 && bytes[end - 1] !== 0x0a) end--;
  // A last line that does not decode (a write torn inside a page, zeros from a lost page) goes too.
  while (end > 0) {
    const start = lastLineStart(bytes, end);
    try {
      decodeReceipt(bytes.subarray(start, end - 1).toString('utf8'));
      return end;
    } catch {
      end = start;
    }
  }
  return 0;
}

/** Start of the line that ends (with its newline) at `end`. */
function lastLineStart(bytes: Buffer, end: number): number {
  // (A negative offset would make lastIndexOf count from the end.)
  if (end < 2) return 0;
  const nl = bytes.lastIndexOf(0x0a, end - 2);
  return nl < 0 ? 0 : nl + 1;
}
