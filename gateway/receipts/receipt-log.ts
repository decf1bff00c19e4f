/**
 * One gateway id's receipt chain on disk (docs/contract.md "Receipts"). Callers hand in unchained
 * records and return at once; one pump assigns seq and prev, encodes, signs checkpoints and writes
 * whole batches with one write in flight. Every timer belongs to the log, never to a tunnel.
 *
 * A failure to recover, create, write, sync or sign puts the log in the failing state: records keep
 * queueing up to max_queued (then they are dropped and counted, and a `dropped` gap names them), and the
 * pump retries every second. The chain only advances when a batch is on disk, so a failed batch is
 * re-chained and re-signed on the retry. An operation that never ends, or a full queue, also counts as
 * failing (writer-health.ts).
 */
import { mkdir } from 'node:fs/promises';
import { errorText } from '../../core/error-text.js';
import type { GapReceipt, Unchained } from '../../core/receipt-format.js';
import type { GatewayMetrics } from '../metrics.js';
import type { AuthorizationLogger } from '../registry-errors.js';
import { type Batch, ChainBuilder, type ChainHead, gapRecord, type Pending } from './chain-builder.js';
import { ReceiptFile } from './receipt-file.js';
import { type ChainPosition, recoverChain } from './receipt-recovery.js';
import type { ReceiptSigner } from './receipt-signer.js';
import { WriterHealth } from './writer-health.js';

export type ReceiptLogOptions = {
  /** `<receipts.path>/<gateway id>`; created when missing. */
  readonly dir: string;
  readonly gatewayId: string;
  readonly signer: ReceiptSigner;
  readonly checkpointReceipts: number;
  readonly checkpointIntervalMs: number;
  readonly fsyncIntervalMs: number;
  readonly rotateBytes: number;
  readonly rotateIntervalMs: number;
  readonly maxQueued: number;
  readonly metrics: ReceiptMetrics;
  readonly logger: AuthorizationLogger;
  /** Tests shorten it; default STALLED_AFTER_MS (writer-health.ts). */
  readonly stalledAfterMs?: number | undefined;
};

export type ReceiptMetrics = Pick<
  GatewayMetrics,
  'receiptsWritten' | 'receiptWriteFailures' | 'receiptsDropped' | 'receiptsFailing' | 'receiptsLastSeq'
>;

/** Queue length at which a flush starts at once rather than at the next tick of FLUSH_DELAY_MS. */
const FLUSH_AT = 512;
const FLUSH_DELAY_MS = 50;
const RETRY_MS = 1000;
/** Bounds of one write: records and bytes. */
const BATCH_RECORDS = 4096;
const BATCH_BYTES = 4 * 1024 * 1024;

export class ReceiptLog {
  private queue: Pending[] = [];
  /** Gaps to write before the queue: the recovery's, in order. */
  private readonly gaps: Unchained<GapReceipt>[] = [];
  private dropped = 0;
  private position: ChainHead | undefined;
  private file: ReceiptFile | undefined;
  private unsigned = 0;
  private firstUnsignedAt = 0;
  private intervalDue = false;
  private fsyncDue = false;
  private readonly health: WriterHealth;
  /** The signer as the chain builder sees it: each signature timed like a write. */
  private readonly chainSigner: Pick<ReceiptSigner, 'keyId' | 'sign'>;
  private running: Promise<void> | undefined;
  private again = false;
  private closing = false;
  private stopped = false;
  private readonly timers = new Map<'flush' | 'checkpoint' | 'fsync' | 'retry' | 'rotate', NodeJS.Timeout>();

  private constructor(private readonly o: ReceiptLogOptions) {
    this.health = new WriterHealth(o);
    this.chainSigner = {
      keyId: o.signer.keyId,
      sign: (message) => this.health.timed('sign', () => o.signer.sign(message)),
    };
  }

  /** Recovers the chain and creates this run's file; a failure leaves the log failing, not thrown. */
  static async open(options: ReceiptLogOptions): Promise<ReceiptLog> {
    const log = new ReceiptLog(options);
    await log.pump();
    return log;
  }

  /** Why records cannot be written now, or undefined while they can. */
  get failing(): string | undefined {
    return this.health.reason;
  }

  get gatewayId(): string {
    return this.o.gatewayId;
  }

  /** Queue a record; never throws, never waits. */
  append(record: Pending): void {
    if (this.closing || this.queue.length >= this.o.maxQueued) {
      this.dropped++;
      this.o.metrics.receiptsDropped.inc();
      return;
    }
    this.queue.push(record);
    this.health.queue(this.queue.length, this.o.maxQueued);
    if (this.health.erroring) return;
    if (this.queue.length === FLUSH_AT) {
      // The tick armed for the first of these would come too late: flush on the next turn instead.
      this.disarm('flush');
      this.arm('flush', 0);
    } else {
      this.arm('flush', FLUSH_DELAY_MS);
    }
  }

  /**
   * Clean stop: everything queued, then a stop checkpoint, synced. `openTunnels` that have not ended (the
   * drain gave up on them) will never have a receipt: a `dropped` gap names them before the checkpoint.
   */
  async close(openTunnels = 0): Promise<void> {
    if (this.closing) return;
    if (openTunnels > 0) {
      const detail = `${openTunnels} tunnels were still open when the gateway stopped; their receipts are not written`;
      this.queue.push(gapRecord('dropped', openTunnels, 0, detail));
    }
    this.closing = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await this.pump();
    if (this.health.erroring) {
      this.o.logger.error(
        { gateway: this.o.gatewayId, queued: this.queue.length, err: this.health.reason },
        'receipts: stopping without the stop checkpoint; the next start records an unclean stop',
      );
    }
    try {
      const file = this.file;
      if (file !== undefined) await this.health.timed('sync', () => file.sync());
    } catch (err) {
      this.o.logger.error({ gateway: this.o.gatewayId, err: errorText(err) }, 'receipts: final sync failed');
    }
    await this.file?.close().catch(() => {});
    this.file = undefined;
    this.o.signer.close();
  }

  private arm(
    name: 'flush' | 'checkpoint' | 'fsync' | 'retry' | 'rotate',
    ms: number,
    then?: () => void,
  ): void {
    if (this.closing || this.timers.has(name)) return;
    const timer = setTimeout(() => {
      this.timers.delete(name);
      then?.();
      void this.pump();
    }, ms);
    timer.unref();
    this.timers.set(name, timer);
  }

  private disarm(name: 'flush' | 'checkpoint'): void {
    const timer = this.timers.get(name);
    if (timer !== undefined) clearTimeout(timer);
    this.timers.delete(name);
  }

  /** Run the writer until there is nothing left it can do; concurrent calls join the running one. */
  private pump(): Promise<void> {
    if (this.running !== undefined) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.work();
          this.health.recovered(this.dropped);
        } catch (err) {
          this.health.failed(err, this.queue.length);
          this.arm('retry', RETRY_MS);
          break;
        }
      } while (this.again);
      this.running = undefined;
    })();
    return this.running;
  }

  private async work(): Promise<void> {
    if (this.stopped) return;
    if (this.position === undefined) this.position = await this.health.timed('recover', () => this.recover());
    for (let first = true; ; first = false) {
      if (this.file === undefined) await this.createFile();
      const file = this.file as ReceiptFile;
      if (file.sealed || this.rotationDue(file)) {
        await this.rotate(file);
        continue;
      }
      // After the first batch, only a backlog (or the stop) goes on at once: the few records that came
      // in during a write wait for their flush tick, so batches stay coalesced under steady load.
      if (!first && !this.closing && this.queue.length < FLUSH_AT) break;
      const batch = await this.nextBatch(file);
      if (batch === undefined) break;
      await this.writeBatch(batch);
      if (batch.stop) {
        this.stopped = true;
        await this.sync(file);
        return;
      }
      // Checked after every batch: a writer that never runs dry must still sync on time.
      if (this.o.fsyncIntervalMs === 0 || this.fsyncDue) await this.sync(file);
      else if (file.unsynced) this.arm('fsync', this.o.fsyncIntervalMs, () => (this.fsyncDue = true));
    }
    if (this.fsyncDue && this.file !== undefined) await this.sync(this.file);
    if (this.queue.length > 0) this.arm('flush', FLUSH_DELAY_MS);
  }

  private async sync(file: ReceiptFile): Promise<void> {
    this.fsyncDue = false;
    await this.health.timed('sync', () => file.sync());
  }

  /**
   * Ends `file` with a rotate checkpoint, synced, and closes it. The checkpoint is written once: a retry
   * after a failed sync only syncs again, so the file still ends in exactly one rotate checkpoint.
   */
  private async rotate(file: ReceiptFile): Promise<void> {
    if (!file.sealed) {
      await this.writeBatch(await this.checkpointOnly('rotate'));
      file.sealed = true;
    }
    await this.sync(file);
    await file.close().catch(() => {});
    this.file = undefined;
  }

  private async recover(): Promise<ChainHead> {
    await mkdir(this.o.dir, { recursive: true, mode: 0o750 });
    const found: ChainPosition = await recoverChain(this.o.dir);
    this.o.metrics.receiptsLastSeq.set({ gateway: this.o.gatewayId }, found.lastSeq);
    if (found.torn !== undefined) {
      this.o.logger.error(
        {
          gateway: this.o.gatewayId,
          file: found.torn.file,
          aside: found.torn.aside,
          bytes: found.torn.bytes,
        },
        'receipts: the last file ended in a torn record; its bytes are kept aside and a gap is recorded',
      );
    }
    if (found.gap !== undefined) {
      this.gaps.push(gapRecord(found.gap.reason, null, found.gap.lostBytes, found.gap.detail));
    }
    this.o.logger.info(
      { gateway: this.o.gatewayId, dir: this.o.dir, last_seq: found.lastSeq, gap: found.gap?.reason ?? null },
      'receipts: chain recovered',
    );
    return { lastSeq: found.lastSeq, prev: found.prev };
  }

  private async createFile(): Promise<void> {
    const position = this.position as { lastSeq: number };
    this.file = await this.health.timed('create', () => ReceiptFile.create(this.o.dir, position.lastSeq + 1));
    this.arm('rotate', this.o.rotateIntervalMs);
  }

  private rotationDue(file: ReceiptFile): boolean {
    if (file.records === 0) return false;
    return file.bytes >= this.o.rotateBytes || Date.now() - file.openedAt >= this.o.rotateIntervalMs;
  }

  /**
   * The next lines to write, chained from the current position: pending gaps, the dropped gap, queued
   * records, with a checkpoint after every checkpoint_receipts unsigned records, after the interval, and
   * (closing, once everything else is in) the stop checkpoint. Undefined when there is nothing to write.
   */
  private async nextBatch(file: ReceiptFile): Promise<Batch | undefined> {
    const chain = new ChainBuilder(this.o.gatewayId, this.chainSigner, this.position as ChainHead);
    let unsigned = this.unsigned;
    let firstUnsignedAt = this.firstUnsignedAt;
    const addUnsigned = (r: Pending) => {
      chain.add(r);
      if (unsigned++ === 0) firstUnsignedAt = Date.now();
    };
    const full = () => chain.records >= BATCH_RECORDS || chain.bytes >= BATCH_BYTES;
    const fileFull = () => file.bytes + chain.bytes >= this.o.rotateBytes;
    for (const gap of this.gaps) addUnsigned(gap);
    const dropped = this.dropped;
    if (dropped > 0) {
      const detail = `${dropped} receipts dropped while the queue was full (receipts.max_queued ${this.o.maxQueued})`;
      addUnsigned(gapRecord('dropped', dropped, 0, detail));
    }
    let fromQueue = 0;
    const queue = this.queue;
    while (fromQueue < queue.length && !full() && !fileFull()) {
      addUnsigned(queue[fromQueue++] as Pending);
      if (unsigned >= this.o.checkpointReceipts) {
        await chain.checkpoint('count');
        unsigned = 0;
      }
    }
    if (unsigned > 0 && this.intervalDue) {
      await chain.checkpoint('interval');
      unsigned = 0;
    }
    const stop = this.closing && fromQueue === queue.length && !fileFull();
    if (stop) {
      await chain.checkpoint('stop');
      unsigned = 0;
    }
    if (chain.records === 0) return undefined;
    return {
      data: chain.data(),
      records: chain.records,
      position: chain.position(),
      fromQueue,
      gaps: this.gaps.length,
      dropped,
      unsigned,
      firstUnsignedAt,
      stop,
    };
  }

  private async checkpointOnly(cause: 'rotate'): Promise<Batch> {
    const chain = new ChainBuilder(this.o.gatewayId, this.chainSigner, this.position as ChainHead);
    await chain.checkpoint(cause);
    return {
      data: chain.data(),
      records: 1,
      position: chain.position(),
      fromQueue: 0,
      gaps: 0,
      dropped: 0,
      unsigned: 0,
      firstUnsignedAt: 0,
      stop: false,
    };
  }

  /** On disk, then (and only then) the chain, queue and counters move on. */
  private async writeBatch(batch: Batch): Promise<void> {
    const file = this.file as ReceiptFile;
    await this.health.timed('write', () => file.write(batch.data, batch.records));
    this.position = batch.position;
    this.o.metrics.receiptsLastSeq.set({ gateway: this.o.gatewayId }, batch.position.lastSeq);
    this.queue.splice(0, batch.fromQueue);
    this.health.queue(this.queue.length, this.o.maxQueued);
    this.gaps.splice(0, batch.gaps);
    this.dropped -= batch.dropped;
    this.unsigned = batch.unsigned;
    this.firstUnsignedAt = batch.firstUnsignedAt;
    this.o.metrics.receiptsWritten.inc(batch.records);
    if (this.unsigned === 0) {
      this.intervalDue = false;
      this.disarm('checkpoint');
    } else {
      const wait = Math.max(0, this.firstUnsignedAt + this.o.checkpointIntervalMs - Date.now());
      this.arm('checkpoint', wait, () => (this.intervalDue = true));
    }
  }
}
