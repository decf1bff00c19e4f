/**
 * Access requests from denials (docs/contract.md "Access requests"). A CONNECT denied because no grant
 * counts (RECORDED_REASONS) is answered at once with the request's id, computed locally
 * (core/access-request-id.ts); the denial itself is only held in memory (access-request-buffer.ts) and
 * written in batches on the registry's record lane (access-request-store.ts), one batch at a time. A
 * batch that cannot be written is logged, counted and dropped: the next denial is the retry, and
 * nothing here ever delays or changes an answer.
 */
import { accessRequestId } from '../core/access-request-id.js';
import type { Destination } from '../core/destination.js';
import type { PeerIdentity } from '../core/identity-extension.js';
import type { Queryable } from '../core/registry-queries.js';
import { AccessRequestBuffer, type BufferedRequest } from './access-request-buffer.js';
import { storeAccessRequests } from './access-request-store.js';
import type { AccessRequestRecorder, DenyReason } from './authorization.js';
import type { GatewayMetrics } from './metrics.js';
import { type AuthorizationLogger, errorText } from './registry-errors.js';

/**
 * The denials that mean "no grant counts": worth asking a principal about. Identity and certificate
 * failures, limits, registry trouble, the address guard and failures of a signature, signer or scope
 * are not: a new grant would not change them.
 */
export const RECORDED_REASONS: ReadonlySet<DenyReason> = new Set<DenyReason>([
  'no_permission',
  'permission_expired',
  'permission_revoked',
]);

/**
 * Distinct requests held between two flushes. Beyond the rate per key, this bounds what keys minted
 * without end can make the gateway hold (and write in one statement).
 */
export const MAX_BUFFERED = 10_000;

/** The one registry lane records are written on (Registry.withClient with lane 'record'). */
export type RecordLane = {
  withClient<T>(queryName: string, fn: (client: Queryable) => Promise<T>, lane: 'record'): Promise<T>;
};

export type AccessRequestsOptions = {
  readonly registry: RecordLane;
  readonly maxPending: number;
  readonly ratePerIdentity: number;
  readonly flushIntervalMs: number;
  readonly dismissQuietHours: number;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger: AuthorizationLogger;
  /** Monotonic milliseconds; injectable for tests. */
  readonly nowMs?: (() => number) | undefined;
};

type Outcome = 'recorded' | 'dropped_rate' | 'dropped_full' | 'failed';

export class AccessRequests implements AccessRequestRecorder {
  private readonly buffer: AccessRequestBuffer;
  private readonly counters: Record<Outcome, { inc(n?: number): void }> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly opts: AccessRequestsOptions) {
    this.buffer = new AccessRequestBuffer({
      ratePerMinute: opts.ratePerIdentity,
      maxBuffered: MAX_BUFFERED,
      nowMs: opts.nowMs,
    });
    const c = opts.metrics?.accessRequests;
    // Bound once: a flood of denials is exactly when label lookups would add up.
    if (c !== undefined) {
      this.counters = {
        recorded: c.labels({ outcome: 'recorded' }),
        dropped_rate: c.labels({ outcome: 'dropped_rate' }),
        dropped_full: c.labels({ outcome: 'dropped_full' }),
        failed: c.labels({ outcome: 'failed' }),
      };
      for (const counter of Object.values(this.counters)) counter.inc(0);
    }
  }

  record(peer: PeerIdentity, destination: Destination, reason: DenyReason): string | undefined {
    if (!RECORDED_REASONS.has(reason)) return undefined;
    const id = accessRequestId(peer.identity, peer.spkiDer, destination.normalized);
    if (this.closed) return id;
    const outcome = this.buffer.add(id, peer, destination.normalized, reason);
    if (outcome !== 'buffered') this.counters?.[outcome].inc();
    else if (this.timer === undefined && this.flushing === undefined) this.schedule();
    return id;
  }

  /** Write what is held now (and wait for a flush already under way). Never rejects. */
  async flush(): Promise<void> {
    while (this.flushing !== undefined) await this.flushing;
    if (this.buffer.size === 0) return;
    const batch = this.buffer.take();
    this.flushing = this.write(batch).finally(() => {
      this.flushing = undefined;
      if (this.buffer.size > 0 && !this.closed) this.schedule();
    });
    await this.flushing;
  }

  /** Stop the timer and write what is held, once. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, this.opts.flushIntervalMs);
    this.timer.unref();
  }

  private async write(batch: BufferedRequest[]): Promise<void> {
    const { registry, maxPending, dismissQuietHours, logger } = this.opts;
    const denials = batch.reduce((sum, e) => sum + e.count, 0);
    try {
      const now = this.buffer.now();
      const result = await registry.withClient(
        'record_access_requests',
        (client) =>
          storeAccessRequests(client, batch, (e) => now - e.seenAtMs, { maxPending, dismissQuietHours }),
        'record',
      );
      this.counters?.recorded.inc(result.recorded);
      this.counters?.dropped_full.inc(result.droppedFull);
      if (result.droppedFull > 0) {
        logger.debug(
          { dropped: result.droppedFull, max_pending: maxPending },
          'access requests not recorded: requests.max_pending reached',
        );
      }
    } catch (err) {
      this.counters?.failed.inc(denials);
      logger.warn(
        { err: errorText(err), requests: batch.length, denials },
        'access requests not recorded: the batch could not be written',
      );
    }
  }
}
