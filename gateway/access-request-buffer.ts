/**
 * Denials waiting to be written as access requests (docs/contract.md "Access requests"), bounded twice
 * before anything reaches the database: a rate per proven key (identity + SPKI, like every per-client
 * limit: gateway/limits.ts), and a cap on distinct requests held between two flushes. Repeats of one
 * request between flushes are one entry with a count, so a busy agent costs one row update per flush.
 * Pure: no timers, no I/O; the clock is injectable.
 */
import { performance } from 'node:perf_hooks';
import type { PeerIdentity } from '../core/identity-extension.js';
import { provenKey, TokenBuckets } from './limits.js';

/** One request as the next flush writes it. */
export type BufferedRequest = {
  readonly requestId: string;
  readonly identity: string;
  readonly spkiDer: Buffer;
  /** Normalized (core/destination.ts). */
  readonly destination: string;
  /** Denials since the last flush. */
  count: number;
  /** Deny reason of the latest of them. */
  reason: string;
  /** When the latest of them happened (the buffer's clock, ms). */
  seenAtMs: number;
};

export type BufferOutcome = 'buffered' | 'dropped_rate' | 'dropped_full';

export type AccessRequestBufferOptions = {
  /** Denials recorded per proven key per minute (bucket of that size, refilled evenly); 0 = unlimited. */
  readonly ratePerMinute: number;
  /** Distinct requests held until the next flush; a new one beyond it is dropped. */
  readonly maxBuffered: number;
  /** Rate buckets remembered; beyond it the least recently used are forgotten (they come back full). */
  readonly maxRateKeys?: number | undefined;
  /** Monotonic milliseconds; injectable for tests. */
  readonly nowMs?: (() => number) | undefined;
};

export class AccessRequestBuffer {
  private entries = new Map<string, BufferedRequest>();
  private readonly buckets: TokenBuckets | undefined;
  private readonly nowMs: () => number;

  constructor(private readonly opts: AccessRequestBufferOptions) {
    this.nowMs = opts.nowMs ?? (() => performance.now());
    if (opts.ratePerMinute > 0) {
      this.buckets = new TokenBuckets(
        opts.ratePerMinute / 60,
        opts.ratePerMinute,
        opts.maxRateKeys ?? 100_000,
        this.nowMs,
      );
    }
  }

  /** Hold one denial for the next flush, unless its key is over the rate or the buffer is full. */
  add(requestId: string, peer: PeerIdentity, destination: string, reason: string): BufferOutcome {
    if (this.buckets !== undefined && !this.buckets.take(provenKey(peer))) return 'dropped_rate';
    const now = this.nowMs();
    const held = this.entries.get(requestId);
    if (held !== undefined) {
      held.count++;
      held.reason = reason;
      held.seenAtMs = now;
      return 'buffered';
    }
    if (this.entries.size >= this.opts.maxBuffered) return 'dropped_full';
    this.entries.set(requestId, {
      requestId,
      identity: peer.identity,
      spkiDer: peer.spkiDer,
      destination,
      count: 1,
      reason,
      seenAtMs: now,
    });
    return 'buffered';
  }

  /** Everything held, in the order first seen; the buffer is empty afterwards. */
  take(): BufferedRequest[] {
    const taken = [...this.entries.values()];
    this.entries = new Map();
    return taken;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The buffer's clock, for turning seenAtMs into an age at flush time. */
  now(): number {
    return this.nowMs();
  }
}
