/**
 * Admission limits: a per-identity CONNECT rate (token bucket) checked before any registry work, and
 * open-tunnel counts, total and per identity.
 *
 * Identities are whatever a client certificate claims (the chain is not verified), so a client can mint
 * as many as it likes: per-identity state must stay bounded. A bucket that has refilled to its burst is
 * indistinguishable from a new one and is dropped; tunnel counters exist only while tunnels are open.
 */
import { performance } from 'node:perf_hooks';
import type { LimitRejection, TunnelLimits } from './authority.js';
import type { GatewayMetrics } from './metrics.js';

export type LimitsOptions = {
  readonly maxTunnels: number;
  readonly maxTunnelsPerIdentity: number;
  /** Tokens per second per identity; 0 = unlimited. */
  readonly connectRatePerIdentity: number;
  readonly connectBurstPerIdentity: number;
  readonly metrics?: GatewayMetrics | undefined;
  /** Monotonic milliseconds; injectable for tests. */
  readonly nowMs?: (() => number) | undefined;
  /** Hard cap on remembered buckets; beyond it the least recently used are forgotten. */
  readonly maxBuckets?: number | undefined;
};

type Bucket = { tokens: number; at: number };

const RATE_LIMITED: LimitRejection = { status: 429, reason: 'rate_limited' };
const IDENTITY_TUNNEL_LIMIT: LimitRejection = { status: 429, reason: 'identity_tunnel_limit' };
// 503, not 429: the gateway as a whole is full, which is not the caller's fault.
const TUNNEL_LIMIT: LimitRejection = { status: 503, reason: 'tunnel_limit' };

export class GatewayLimits implements TunnelLimits {
  private readonly buckets = new Map<string, Bucket>();
  private readonly perIdentity = new Map<string, number>();
  private total = 0;
  private readonly nowMs: () => number;
  private readonly maxBuckets: number;
  private sweepAt = 1024;
  private lastSweep = 0;

  constructor(private readonly opts: LimitsOptions) {
    this.nowMs = opts.nowMs ?? (() => performance.now());
    this.maxBuckets = opts.maxBuckets ?? 100_000;
  }

  admitConnect(identity: string): LimitRejection | undefined {
    const rate = this.opts.connectRatePerIdentity;
    if (rate <= 0) return undefined;
    const burst = this.opts.connectBurstPerIdentity;
    const now = this.nowMs();
    this.maybeSweep(now);

    const bucket = this.buckets.get(identity);
    let tokens: number;
    if (bucket === undefined) {
      tokens = burst;
    } else {
      tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
      this.buckets.delete(identity); // re-inserted below: Map order doubles as LRU order
    }
    if (tokens < 1) {
      this.buckets.set(identity, { tokens, at: now });
      return this.reject(RATE_LIMITED);
    }
    this.buckets.set(identity, { tokens: tokens - 1, at: now });
    while (this.buckets.size > this.maxBuckets) {
      const oldest = this.buckets.keys().next();
      if (oldest.done) break;
      this.buckets.delete(oldest.value);
    }
    return undefined;
  }

  acquireTunnel(identity: string): { readonly release: () => void } | LimitRejection {
    if (this.total >= this.opts.maxTunnels) return this.reject(TUNNEL_LIMIT);
    const mine = this.perIdentity.get(identity) ?? 0;
    if (mine >= this.opts.maxTunnelsPerIdentity) return this.reject(IDENTITY_TUNNEL_LIMIT);
    this.total++;
    this.perIdentity.set(identity, mine + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.total--;
        const n = (this.perIdentity.get(identity) ?? 1) - 1;
        if (n <= 0) this.perIdentity.delete(identity);
        else this.perIdentity.set(identity, n);
      },
    };
  }

  stats(): { tunnels: number; identitiesWithTunnels: number; rateBuckets: number } {
    return {
      tunnels: this.total,
      identitiesWithTunnels: this.perIdentity.size,
      rateBuckets: this.buckets.size,
    };
  }

  private reject(r: LimitRejection): LimitRejection {
    this.opts.metrics?.limitRejections.inc({ reason: r.reason });
    return r;
  }

  /** Drop full buckets when the map has grown or a minute has passed; amortized O(1) per admit. */
  private maybeSweep(now: number): void {
    if (this.buckets.size < this.sweepAt && now - this.lastSweep < 60_000) return;
    this.lastSweep = now;
    const { connectRatePerIdentity: rate, connectBurstPerIdentity: burst } = this.opts;
    for (const [id, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * rate >= burst) this.buckets.delete(id);
    }
    this.sweepAt = Math.max(1024, this.buckets.size * 2);
  }
}

/** Construct from the [limits] config section. */
export function limitsFromConfig(
  limits: {
    readonly maxTunnels: number;
    readonly maxTunnelsPerIdentity: number;
    readonly connectRatePerIdentity: number;
    readonly connectBurstPerIdentity: number;
  },
  metrics?: GatewayMetrics,
): GatewayLimits {
  return new GatewayLimits({ ...limits, metrics });
}
