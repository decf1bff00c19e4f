/**
 * Admission limits: a CONNECT rate (token bucket) per proven key, checked before any registry work, and
 * open-tunnel counts, total and per proven key.
 *
 * A client certificate's identity is only a claim (the chain is not verified); what the TLS handshake
 * proves is possession of the certificate's key. So every per-client limit is keyed by identity + SPKI
 * hash: another key claiming `build-agent-01` gets buckets and tunnel counts of its own and cannot spend
 * the real agent's (docs/contract.md "Admission limits"). A client can still mint keys without end, so
 * per-key state stays bounded: buckets live in an LRU and expire once they would have refilled; tunnel
 * counters exist only while tunnels are open.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { LRUCache } from 'lru-cache';
import type { PeerIdentity } from '../core/identity-extension.js';
import type { LimitRejection, TunnelLimits } from './authorization.js';
import type { GatewayMetrics } from './metrics.js';

export type LimitsOptions = {
  readonly maxTunnels: number;
  readonly maxTunnelsPerIdentity: number;
  /** Tokens per second per identity + key; 0 = unlimited. */
  readonly connectRatePerIdentity: number;
  readonly connectBurstPerIdentity: number;
  readonly metrics?: GatewayMetrics | undefined;
  /** Monotonic milliseconds; injectable for tests. */
  readonly nowMs?: (() => number) | undefined;
  /** Hard cap on remembered buckets; beyond it the least recently used are forgotten. */
  readonly maxBuckets?: number | undefined;
};

type Bucket = { tokens: number; at: number };

/**
 * Token buckets by key, bounded. A bucket that has refilled to its burst is indistinguishable from a new
 * one, so it expires then (TTL = time to refill from empty); an evicted bucket comes back full, which
 * grants no more than a fresh key would. Used for every per-client rate in the gateway.
 */
export class TokenBuckets {
  private readonly buckets: LRUCache<string, Bucket>;
  private readonly nowMs: () => number;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    maxKeys: number,
    nowMs?: () => number,
  ) {
    this.nowMs = nowMs ?? (() => performance.now());
    this.buckets = new LRUCache<string, Bucket>({
      max: maxKeys,
      ttl: Math.max(1, Math.ceil((burst / rate) * 1000)),
      // lru-cache memoizes "now" for ttlResolution ms; the clock is ours (and faked in tests).
      ttlResolution: 0,
      perf: { now: this.nowMs },
      updateAgeOnGet: false,
    });
  }

  /** Take one token; false (and nothing taken) when the bucket is empty. */
  take(key: string): boolean {
    const now = this.nowMs();
    const tokens = this.level(key, now);
    if (tokens < 1) {
      this.buckets.set(key, { tokens, at: now });
      return false;
    }
    this.buckets.set(key, { tokens: tokens - 1, at: now });
    return true;
  }

  /**
   * Give back a token taken for work that turned out not to count (capped at the burst). A bucket it
   * fills is kept full until its TTL rather than deleted: lru-cache empties itself by clearing arrays
   * sized `max`, so deleting the last bucket cost ~1 ms per new connection from a lone address
   * (bench/README.md "Fourth round (issue #19)").
   */
  refund(key: string): void {
    const now = this.nowMs();
    this.buckets.set(key, { tokens: Math.min(this.burst, this.level(key, now) + 1), at: now });
  }

  /** Buckets remembered and not yet refilled (stats and tests; O(n)). */
  get size(): number {
    this.buckets.purgeStale();
    let n = 0;
    // A bucket a refund filled counts as forgotten: only a take stores fewer tokens than the burst.
    for (const b of this.buckets.values()) if (b.tokens < this.burst) n++;
    return n;
  }

  private level(key: string, now: number): number {
    const b = this.buckets.get(key);
    if (b === undefined) return this.burst;
    return Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
  }
}

const RATE_LIMITED: LimitRejection = { status: 429, reason: 'rate_limited' };
const IDENTITY_TUNNEL_LIMIT: LimitRejection = { status: 429, reason: 'identity_tunnel_limit' };
// 503, not 429: the gateway as a whole is full, which is not the caller's fault.
const TUNNEL_LIMIT: LimitRejection = { status: 503, reason: 'tunnel_limit' };

/**
 * The key limits count by: SPKI hash first (fixed length, so no identity can forge another pair), then
 * the identity. Remembered per PeerIdentity object, which tls-identity.ts shares across every
 * connection with the same certificate, so a busy client is hashed once.
 */
const keyOfPeer = new WeakMap<PeerIdentity, string>();

export function provenKey(peer: PeerIdentity): string {
  let key = keyOfPeer.get(peer);
  if (key === undefined) {
    key = `${createHash('sha256').update(peer.spkiDer).digest('base64')} ${peer.identity}`;
    keyOfPeer.set(peer, key);
  }
  return key;
}

export class GatewayLimits implements TunnelLimits {
  private readonly buckets: TokenBuckets | undefined;
  private readonly perIdentity = new Map<string, number>();
  private total = 0;

  constructor(private readonly opts: LimitsOptions) {
    if (opts.connectRatePerIdentity > 0) {
      this.buckets = new TokenBuckets(
        opts.connectRatePerIdentity,
        opts.connectBurstPerIdentity,
        opts.maxBuckets ?? 100_000,
        opts.nowMs,
      );
    }
  }

  admitConnect(peer: PeerIdentity): LimitRejection | undefined {
    if (this.buckets === undefined || this.buckets.take(provenKey(peer))) return undefined;
    return this.reject(RATE_LIMITED);
  }

  acquireTunnel(peer: PeerIdentity): { readonly release: () => void } | LimitRejection {
    if (this.total >= this.opts.maxTunnels) return this.reject(TUNNEL_LIMIT);
    const key = provenKey(peer);
    const mine = this.perIdentity.get(key) ?? 0;
    if (mine >= this.opts.maxTunnelsPerIdentity) return this.reject(IDENTITY_TUNNEL_LIMIT);
    this.total++;
    this.perIdentity.set(key, mine + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.total--;
        const n = (this.perIdentity.get(key) ?? 1) - 1;
        if (n <= 0) this.perIdentity.delete(key);
        else this.perIdentity.set(key, n);
      },
    };
  }

  stats(): { tunnels: number; identitiesWithTunnels: number; rateBuckets: number } {
    return {
      tunnels: this.total,
      identitiesWithTunnels: this.perIdentity.size,
      rateBuckets: this.buckets?.size ?? 0,
    };
  }

  private reject(r: LimitRejection): LimitRejection {
    this.opts.metrics?.limitRejections.inc({ reason: r.reason });
    return r;
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
