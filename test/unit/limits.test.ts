// Admission limits with a fake clock: token bucket per proven key (identity + SPKI), tunnel slots total
// and per proven key.
import { describe, expect, it } from 'vitest';
import type { PeerIdentity } from '../../core/identity-extension.js';
import type { LimitRejection } from '../../gateway/authorization.js';
import { GatewayLimits, limitsFromConfig, TokenBuckets } from '../../gateway/limits.js';
import { createGatewayMetrics } from '../../gateway/metrics.js';

const peers = new Map<string, PeerIdentity>();
/** The same object for the same (identity, key), as tls-identity.ts hands out per certificate. */
function peer(identity: string, key = 'key-1'): PeerIdentity {
  const k = `${identity}|${key}`;
  let p = peers.get(k);
  if (p === undefined) {
    p = { identity, spkiDer: Buffer.from(key) };
    peers.set(k, p);
  }
  return p;
}

function setup(overrides: Partial<ConstructorParameters<typeof GatewayLimits>[0]> = {}) {
  // Not 0: lru-cache takes a start time of 0 as "no TTL", so a bucket set at 0 would never expire
  // (performance.now() is never 0 in a running gateway).
  let now = 1000;
  const metrics = createGatewayMetrics({ defaultMetrics: false });
  const limits = new GatewayLimits({
    maxTunnels: 100,
    maxTunnelsPerIdentity: 100,
    connectRatePerIdentity: 10,
    connectBurstPerIdentity: 3,
    metrics,
    nowMs: () => now,
    ...overrides,
  });
  return { limits, metrics, advance: (ms: number) => (now += ms) };
}

const RATE_LIMITED = { status: 429, reason: 'rate_limited' };

const isRejection = (x: unknown): x is LimitRejection => typeof x === 'object' && x !== null && 'reason' in x;

async function rejections(metrics: ReturnType<typeof createGatewayMetrics>, reason: string): Promise<number> {
  const m = await metrics.limitRejections.get();
  return m.values.find((v) => v.labels['reason'] === reason)?.value ?? 0;
}

describe('connect rate (token bucket)', () => {
  // Each step: [advance ms, identity, expected admitted?]
  const SCRIPT: readonly (readonly [number, string, boolean])[] = [
    [0, 'a', true],
    [0, 'a', true],
    [0, 'a', true], // burst 3 spent
    [0, 'a', false],
    [0, 'b', true], // other identities unaffected
    [50, 'a', false], // 0.5 token
    [50, 'a', true], // 1 token after 100 ms at 10/s
    [0, 'a', false],
    [10_000, 'a', true], // refilled, capped at burst
    [0, 'a', true],
    [0, 'a', true],
    [0, 'a', false],
  ];
  it('follows the script', async () => {
    const { limits, metrics, advance } = setup();
    SCRIPT.forEach(([ms, id, admitted], i) => {
      advance(ms);
      const r = limits.admitConnect(peer(id));
      expect(r === undefined, `step ${i}`).toBe(admitted);
      if (r !== undefined) expect(r).toEqual(RATE_LIMITED);
    });
    expect(await rejections(metrics, 'rate_limited')).toBe(SCRIPT.filter((s) => !s[2]).length);
  });

  it('rate 0 means unlimited and keeps no state', () => {
    const { limits } = setup({ connectRatePerIdentity: 0 });
    for (let i = 0; i < 10_000; i++) expect(limits.admitConnect(peer('a'))).toBeUndefined();
    expect(limits.stats().rateBuckets).toBe(0);
  });

  it('forgets refilled buckets and stays bounded under identity churn', () => {
    const { limits, advance } = setup({ maxBuckets: 5000 });
    for (let i = 0; i < 20_000; i++) {
      limits.admitConnect(peer(`id-${i}`));
      advance(1);
    }
    expect(limits.stats().rateBuckets).toBeLessThanOrEqual(5000);
    advance(60_000);
    limits.admitConnect(peer('after-a-minute'));
    expect(limits.stats().rateBuckets).toBe(1);
  });

  it('holds at most maxBuckets keys; the least recently used is evicted and comes back with no more than a fresh burst', () => {
    // Clock frozen: nothing refills or expires, so every forgotten bucket was evicted for room.
    const { limits } = setup({ maxBuckets: 2, connectBurstPerIdentity: 2 });
    const admitted = (id: string, n: number) =>
      Array.from({ length: n }, () => limits.admitConnect(peer(id)) === undefined).filter(Boolean).length;
    expect(admitted('a', 5)).toBe(2);
    expect(admitted('b', 5)).toBe(2);
    expect(limits.stats().rateBuckets).toBe(2);
    expect(admitted('c', 1)).toBe(1); // a third key: 'a' (least recently used) is evicted
    expect(limits.stats().rateBuckets).toBe(2);
    expect(admitted('b', 1)).toBe(0); // 'b' was more recent than 'a' and is still remembered, empty
    expect(admitted('a', 5)).toBe(2); // a fresh burst for the evicted key, not more
    expect(limits.stats().rateBuckets).toBe(2);
  });
});

describe('TokenBuckets', () => {
  // rate 10/s, burst 3: empty → full in 300 ms. Each step: [advance ms, action, expected].
  type Step = readonly [number, 'take' | 'refund' | 'size', boolean | number];
  const SCRIPTS: readonly (readonly [string, readonly Step[]])[] = [
    [
      'a bucket is forgotten just after it would have refilled from empty',
      [
        [0, 'take', true],
        [0, 'take', true],
        [0, 'take', true],
        [0, 'size', 1],
        [300, 'size', 1],
        [1, 'size', 0],
      ],
    ],
    [
      'a refund gives one token back',
      [
        [0, 'take', true],
        [0, 'take', true],
        [0, 'take', true],
        [0, 'take', false],
        [0, 'refund', 0],
        [0, 'take', true],
        [0, 'take', false],
      ],
    ],
    [
      'a refund that fills the bucket forgets it',
      [
        [0, 'take', true],
        [0, 'size', 1],
        [0, 'refund', 0],
        [0, 'size', 0],
      ],
    ],
    [
      'a refund never grows a bucket past its burst',
      [
        [0, 'refund', 0],
        [0, 'refund', 0],
        [0, 'take', true],
        [0, 'take', true],
        [0, 'take', true],
        [0, 'take', false],
      ],
    ],
  ];
  it.each(SCRIPTS)('%s', (_name, steps) => {
    let now = 1000;
    const buckets = new TokenBuckets(10, 3, 100, () => now);
    steps.forEach(([ms, action, expected], i) => {
      now += ms;
      if (action === 'take') expect(buckets.take('k'), `step ${i}`).toBe(expected);
      else if (action === 'refund') buckets.refund('k');
      else expect(buckets.size, `step ${i}`).toBe(expected);
    });
  });

  it('runs on the monotonic clock when none is given', () => {
    const buckets = new TokenBuckets(1, 2, 100);
    expect([buckets.take('k'), buckets.take('k'), buckets.take('k')]).toEqual([true, true, false]);
  });
});

describe('keyed by the proven key, not the claimed identity', () => {
  it('another key claiming the same identity spends its own bucket', () => {
    const { limits } = setup();
    for (let i = 0; i < 3; i++) expect(limits.admitConnect(peer('agent', 'attacker-key'))).toBeUndefined();
    for (let i = 0; i < 100; i++)
      expect(limits.admitConnect(peer('agent', 'attacker-key'))).toEqual(RATE_LIMITED);
    expect(limits.admitConnect(peer('agent', 'real-key'))).toBeUndefined();
  });

  it('the same key claiming another identity is another client as well', () => {
    const { limits } = setup({ connectBurstPerIdentity: 1 });
    expect(limits.admitConnect(peer('a', 'k'))).toBeUndefined();
    expect(limits.admitConnect(peer('a', 'k'))).toEqual(RATE_LIMITED);
    expect(limits.admitConnect(peer('b', 'k'))).toBeUndefined();
  });

  it('open tunnels per identity are counted per key', () => {
    const { limits } = setup({ maxTunnelsPerIdentity: 1 });
    expect(isRejection(limits.acquireTunnel(peer('agent', 'attacker-key')))).toBe(false);
    expect(limits.acquireTunnel(peer('agent', 'attacker-key'))).toEqual({
      status: 429,
      reason: 'identity_tunnel_limit',
    });
    expect(isRejection(limits.acquireTunnel(peer('agent', 'real-key')))).toBe(false);
  });
});

describe('tunnel slots', () => {
  it('enforces total and per-identity limits; release is idempotent', async () => {
    const { limits, metrics } = setup({ maxTunnels: 3, maxTunnelsPerIdentity: 2 });
    const a1 = limits.acquireTunnel(peer('a'));
    const a2 = limits.acquireTunnel(peer('a'));
    expect(isRejection(a1) || isRejection(a2)).toBe(false);
    expect(limits.acquireTunnel(peer('a'))).toEqual({ status: 429, reason: 'identity_tunnel_limit' });
    const b1 = limits.acquireTunnel(peer('b'));
    expect(isRejection(b1)).toBe(false);
    expect(limits.acquireTunnel(peer('c'))).toEqual({ status: 503, reason: 'tunnel_limit' });
    if (isRejection(a1) || isRejection(b1)) throw new Error('unreachable');
    a1.release();
    a1.release();
    expect(limits.stats()).toMatchObject({ tunnels: 2, identitiesWithTunnels: 2 });
    expect(isRejection(limits.acquireTunnel(peer('c')))).toBe(false);
    b1.release();
    expect(limits.stats()).toMatchObject({ tunnels: 2, identitiesWithTunnels: 2 });
    expect(await rejections(metrics, 'identity_tunnel_limit')).toBe(1);
    expect(await rejections(metrics, 'tunnel_limit')).toBe(1);
  });

  it('releasing one of two tunnels frees one slot of that key', () => {
    const { limits } = setup({ maxTunnelsPerIdentity: 2 });
    const first = limits.acquireTunnel(peer('a'));
    expect(isRejection(limits.acquireTunnel(peer('a')))).toBe(false);
    if (isRejection(first)) throw new Error('unreachable');
    first.release();
    expect(limits.stats()).toMatchObject({ tunnels: 1, identitiesWithTunnels: 1 });
    expect(isRejection(limits.acquireTunnel(peer('a')))).toBe(false);
    expect(limits.acquireTunnel(peer('a'))).toEqual({ status: 429, reason: 'identity_tunnel_limit' });
  });
});

describe('without metrics, from config', () => {
  it('rejects without a metrics registry to count in', () => {
    const { limits } = setup({ metrics: undefined, connectBurstPerIdentity: 1, maxTunnels: 0 });
    expect(limits.admitConnect(peer('a'))).toBeUndefined();
    expect(limits.admitConnect(peer('a'))).toEqual(RATE_LIMITED);
    expect(limits.acquireTunnel(peer('a'))).toEqual({ status: 503, reason: 'tunnel_limit' });
  });

  it('limitsFromConfig applies every [limits] value', () => {
    const limits = limitsFromConfig({
      maxTunnels: 2,
      maxTunnelsPerIdentity: 1,
      connectRatePerIdentity: 0.001,
      connectBurstPerIdentity: 2,
    });
    expect([limits.admitConnect(peer('a')), limits.admitConnect(peer('a'))]).toEqual([undefined, undefined]);
    expect(limits.admitConnect(peer('a'))).toEqual(RATE_LIMITED);
    expect(isRejection(limits.acquireTunnel(peer('a')))).toBe(false);
    expect(limits.acquireTunnel(peer('a'))).toEqual({ status: 429, reason: 'identity_tunnel_limit' });
    expect(isRejection(limits.acquireTunnel(peer('b')))).toBe(false);
    expect(limits.acquireTunnel(peer('c'))).toEqual({ status: 503, reason: 'tunnel_limit' });
  });
});
