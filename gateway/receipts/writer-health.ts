/**
 * Whether the receipt writer can be counted on now (docs/contract.md "Receipts", Failure): it cannot
 * while an operation failed (until one succeeds), while an operation has been running longer than
 * STALLED_AFTER_MS (a disk or a PKCS#11 C_Sign that never answers fails nothing, it just never ends),
 * and while max_queued records wait. Any of these sets agent_gateway_receipts_failing and, with
 * on_failure = "deny", refuses new CONNECTs: a tunnel allowed then could have its receipt dropped.
 */
import { errorText } from '../../core/error-text.js';
import type { GatewayMetrics } from '../metrics.js';
import type { AuthorizationLogger } from '../registry-errors.js';

/**
 * How long one write, fsync, file creation, recovery or signature may run before the writer counts as
 * failing. A healthy disk or TPM answers in milliseconds, and a busy one in well under a second; five
 * seconds is far beyond that, yet short enough that few tunnels are allowed whose receipts may never be
 * written. The operation is not abandoned: when it completes, the writer is healthy again.
 */
export const STALLED_AFTER_MS = 5000;

export type WriterOperation = 'recover' | 'create' | 'write' | 'sync' | 'sign';

export type WriterHealthOptions = {
  readonly gatewayId: string;
  readonly dir: string;
  readonly metrics: Pick<GatewayMetrics, 'receiptWriteFailures' | 'receiptsFailing'>;
  readonly logger: AuthorizationLogger;
  /** Tests shorten it; the gateway uses STALLED_AFTER_MS. */
  readonly stalledAfterMs?: number | undefined;
};

export class WriterHealth {
  private error: string | undefined;
  private stall: string | undefined;
  private full: string | undefined;
  private readonly stalledAfterMs: number;

  constructor(private readonly o: WriterHealthOptions) {
    this.stalledAfterMs = o.stalledAfterMs ?? STALLED_AFTER_MS;
    o.metrics.receiptsFailing.set(0);
  }

  /** Why records cannot be counted on now, or undefined while they can. */
  get reason(): string | undefined {
    return this.error ?? this.stall ?? this.full;
  }

  /** The last operation failed (the writer retries): set until one succeeds. */
  get erroring(): boolean {
    return this.error !== undefined;
  }

  failed(err: unknown, queued: number): void {
    const text = errorText(err);
    this.o.metrics.receiptWriteFailures.inc();
    if (this.error !== text) {
      this.o.logger.error(
        { gateway: this.o.gatewayId, dir: this.o.dir, err: text, queued },
        'receipts: cannot write; retrying every second',
      );
    }
    this.error = text;
    this.update();
  }

  recovered(dropped: number): void {
    if (this.error === undefined) return;
    this.o.logger.info({ gateway: this.o.gatewayId, dir: this.o.dir, dropped }, 'receipts: writing again');
    this.error = undefined;
    this.update();
  }

  /** Called whenever the queue grows or shrinks; cheap when nothing changes. */
  queue(length: number, max: number): void {
    if (length >= max === (this.full !== undefined)) return;
    if (length < max) {
      this.full = undefined;
    } else {
      this.full = `${length} receipts wait to be written (receipts.max_queued ${max})`;
      if (this.error === undefined && this.stall === undefined) {
        this.o.logger.error(
          { gateway: this.o.gatewayId, dir: this.o.dir, queued: length },
          'receipts: the queue is full; further receipts are dropped until it drains',
        );
      }
    }
    this.update();
  }

  /** Runs one writer operation, counting the writer as failing while it takes too long. */
  async timed<T>(what: WriterOperation, op: () => Promise<T>): Promise<T> {
    const started = Date.now();
    const timer = setTimeout(() => {
      this.stall = `a receipt ${what} has not completed after ${this.stalledAfterMs} ms`;
      this.o.logger.error(
        { gateway: this.o.gatewayId, dir: this.o.dir, operation: what },
        `receipts: ${this.stall}`,
      );
      this.update();
    }, this.stalledAfterMs);
    timer.unref();
    try {
      return await op();
    } finally {
      clearTimeout(timer);
      if (this.stall !== undefined) {
        this.stall = undefined;
        this.o.logger.info(
          { gateway: this.o.gatewayId, operation: what, ms: Date.now() - started },
          'receipts: the stalled operation completed',
        );
        this.update();
      }
    }
  }

  private update(): void {
    this.o.metrics.receiptsFailing.set(this.reason === undefined ? 0 : 1);
  }
}
