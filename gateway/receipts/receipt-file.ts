/**
 * One open receipt file: created new (never appended to: a file belongs to one run), written at known
 * offsets, so a write that failed half-way is cut back to the last whole batch before the retry.
 */
import { type FileHandle, open, rm } from 'node:fs/promises';
import path from 'node:path';
import { receiptFileName } from './receipt-recovery.js';

export class ReceiptFile {
  /** Bytes of whole batches written. */
  bytes = 0;
  /** Records written. */
  records = 0;
  readonly openedAt = Date.now();
  /** Bytes written since the last sync. */
  unsynced = false;
  /** Its rotate checkpoint is written: what is left is to sync and close it. */
  sealed = false;
  /** A write failed: what follows `bytes` on disk is unknown until cut back. */
  private torn = false;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  /**
   * Creates `<dir>/receipts-<firstSeq>.jsonl`; fails if it exists. When the directory cannot be synced the
   * new file is removed again, or every retry would find its name taken. (`syncDir`: tests fail it.)
   */
  static async create(dir: string, firstSeq: number, syncDir = syncDirectory): Promise<ReceiptFile> {
    const file = path.join(dir, receiptFileName(firstSeq));
    const handle = await open(file, 'wx', 0o640);
    try {
      // The new name must survive a crash as surely as the lines written into it.
      await syncDir(dir);
    } catch (err) {
      await handle.close().catch(() => {});
      await rm(file, { force: true });
      throw err;
    }
    return new ReceiptFile(file, handle);
  }

  /** Write `data` (whole lines) after the last whole batch. On failure nothing is counted. */
  async write(data: Buffer, records: number): Promise<void> {
    if (this.torn) {
      await this.handle.truncate(this.bytes);
      this.torn = false;
    }
    this.torn = true;
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, this.bytes + done);
      done += bytesWritten;
    }
    this.torn = false;
    this.bytes += data.length;
    this.records += records;
    this.unsynced = true;
  }

  async sync(): Promise<void> {
    if (!this.unsynced) return;
    await this.handle.datasync();
    this.unsynced = false;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
