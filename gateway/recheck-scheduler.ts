/**
 * When open tunnels are re-checked, and in what order; what a re-check does is recheck-batch.ts. Split
 * from live-revocation.ts so the ordering rules below sit apart from the verdicts.
 *
 * - Tunnels marked by a change wait coalesceMs for more marks, then go as one batch.
 * - A sweep (every tunnel) is worked off in chunks of chunkSize, and marked tunnels go before the next
 *   chunk, so a revoke is never queued behind a re-check of every tunnel. A newer sweep replaces an
 *   unfinished one.
 * - Re-checks that could not reach the registry are retried on a backoff: soon at first, then every
 *   retryMaxMs (README "Revocation: the guarantee").
 * - One batch runs at a time: a tunnel marked while its batch runs is checked again afterwards.
 */
import { BackoffTimeout } from './backoff-timeout.js';

export type RecheckSchedulerOptions<E> = {
  /** Re-check one batch; never rejects. */
  readonly run: (batch: E[]) => Promise<void>;
  /** Tunnels in one chunk of a sweep. */
  readonly chunkSize: number;
  /** How long to wait for more marks before running a batch. */
  readonly coalesceMs: number;
  /** The longest retry delay (live revocation's recheckIntervalMs). */
  readonly retryMaxMs: number;
};

export class RecheckScheduler<E> {
  /** A re-check of every tunnel, worked off in chunks so targeted re-checks never wait behind it. */
  private sweepQueue: E[] = [];
  private readonly pending = new Set<E>();
  private readonly retry = new Set<E>();
  private running: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private readonly retryBackoff: BackoffTimeout;
  private stopped = false;

  constructor(private readonly opts: RecheckSchedulerOptions<E>) {
    // A failed re-check under load is usually a slow query, not an outage: try again soon, so one
    // unlucky query does not hold a revoked tunnel open for a whole interval.
    this.retryBackoff = new BackoffTimeout(() => this.retryNow(), {
      initialDelayMs: Math.min(200, opts.retryMaxMs),
      maxDelayMs: opts.retryMaxMs,
    });
  }

  /** Tunnels waiting for a re-check (marked, retrying, or still in the sweep). */
  get queued(): number {
    return this.pending.size + this.retry.size + this.sweepQueue.length;
  }

  /** The delay of the next retry (before jitter), for the log line. */
  get retryDelayMs(): number {
    return this.retryBackoff.delayMs;
  }

  /** Re-check `entry` in the next batch, coalesceMs from now at the latest. */
  mark(entry: E): void {
    this.pending.add(entry);
    this.flushSoon();
  }

  /** mark() for each of `entries`; no timer when there are none. */
  markAll(entries: Iterable<E>): void {
    let any = false;
    for (const entry of entries) {
      this.pending.add(entry);
      any = true;
    }
    if (any) this.flushSoon();
  }

  /** Queue a re-check of every one of `entries` (run it with flush() or flushSoon()). */
  sweep(entries: Iterable<E>): void {
    // A newer snapshot covers everything an unfinished one still held.
    this.sweepQueue = [...entries];
    this.retry.clear();
  }

  /** `entry` could not be confirmed: re-check it after the retry backoff. */
  retryLater(entry: E): void {
    this.retry.add(entry);
    if (this.retryBackoff.isRunning || this.stopped) return;
    this.retryBackoff.runOnce();
  }

  /** `entry` got an answer: no retry pending for it. */
  answered(entry: E): void {
    this.retry.delete(entry);
  }

  /** A batch in which the registry answered every question: back to the shortest retry delay. */
  batchAnswered(): void {
    this.retryBackoff.reset();
  }

  /** `entry` is gone: drop it from the marks and retries (a sweep skips it by its done flag). */
  forget(entry: E): void {
    this.pending.delete(entry);
    this.retry.delete(entry);
  }

  flushSoon(): void {
    if (this.flushTimer !== undefined || this.stopped) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      void this.flush();
    }, this.opts.coalesceMs);
    this.flushTimer.unref();
  }

  /** Run everything queued now; resolves when nothing is left (or stop() was called). */
  flush(): Promise<void> {
    if (this.running === undefined) {
      this.running = this.drain().finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  /** No new batch or timer from now on; the batch running goes on (see idle()). */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.flushTimer);
    this.retryBackoff.stop();
  }

  /** Resolves once the batch running (if any) is done. */
  async idle(): Promise<void> {
    await this.running;
  }

  private retryNow(): void {
    for (const entry of this.retry) this.pending.add(entry);
    this.retry.clear();
    void this.flush();
  }

  private async drain(): Promise<void> {
    // Yield once so marks made in the same tick join this batch.
    await Promise.resolve();
    while (!this.stopped && (this.pending.size > 0 || this.sweepQueue.length > 0)) {
      let batch: E[];
      if (this.pending.size > 0) {
        batch = [...this.pending];
        this.pending.clear();
      } else {
        batch = this.sweepQueue.splice(0, this.opts.chunkSize);
      }
      await this.opts.run(batch);
    }
  }
}
