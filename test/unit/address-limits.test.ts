// Per-source-address limits with a fake clock: the address key, open-connection caps, and the lookup
// budget (taken before authorization, refunded when allowed, so only denials spend it).
import { describe, expect, it } from 'vitest';
import { AddressLimits, addressKey } from '../../gateway/address-limits.js';
import { createGatewayMetrics } from '../../gateway/metrics.js';

function setup(overrides: Partial<ConstructorParameters<typeof AddressLimits>[0]> = {}) {
  let now = 0;
  const metrics = createGatewayMetrics({ defaultMetrics: false });
  const limits = new AddressLimits({
    maxConnectionsPerAddress: 2,
    maxUnprovenConnectionsPerAddress: 1,
    deniedConnectRatePerAddress: 10,
    deniedConnectBurstPerAddress: 3,
    metrics,
    nowMs: () => now,
    ...overrides,
  });
  return { limits, metrics, advance: (ms: number) => (now += ms) };
}

async function rejections(metrics: ReturnType<typeof createGatewayMetrics>, reason: string): Promise<number> {
  const m = await metrics.limitRejections.get();
  return m.values.find((v) => v.labels['reason'] === reason)?.value ?? 0;
}

describe('addressKey', () => {
  it.each([
    ['127.0.0.2', '127.0.0.2'],
    ['::ffff:127.0.0.2', '127.0.0.2'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:db8:1:2::9', '2001:db8:1:2::/64'],
    ['2001:db8::1', '2001:db8:0:0::/64'],
    ['2001:0db8:0001:0002:ffff::1', '2001:db8:1:2::/64'],
    ['::1', '0:0:0:0::/64'],
    [undefined, 'unknown'],
  ])('%s → %s', (input, key) => {
    expect(addressKey(input)).toBe(key);
  });
});

describe('open connections per address', () => {
  it('caps each address, counts refusals, frees a slot on close', async () => {
    const { limits, metrics } = setup();
    expect(limits.openConnection('a')).toBe(true);
    expect(limits.openConnection('a')).toBe(true);
    expect(limits.openConnection('a')).toBe(false);
    expect(limits.openConnection('b')).toBe(true);
    limits.closeConnection('a');
    expect(limits.openConnection('a')).toBe(true);
    expect(await rejections(metrics, 'address_connection_limit')).toBe(1);

    expect(limits.openUnproven('a')).toBe(true);
    expect(limits.openUnproven('a')).toBe(false);
    limits.closeUnproven('a');
    expect(limits.openUnproven('a')).toBe(true);
    expect(await rejections(metrics, 'unproven_connection_limit')).toBe(1);
  });

  it('keeps no counter for an address with nothing open', () => {
    const { limits } = setup();
    for (let i = 0; i < 1000; i++) {
      limits.openConnection(`10.0.${i >> 8}.${i & 255}`);
      limits.openUnproven(`10.0.${i >> 8}.${i & 255}`);
    }
    for (let i = 0; i < 1000; i++) {
      limits.closeConnection(`10.0.${i >> 8}.${i & 255}`);
      limits.closeUnproven(`10.0.${i >> 8}.${i & 255}`);
    }
    expect(limits.stats()).toMatchObject({ addressesConnected: 0, addressesUnproven: 0 });
  });
});

describe('lookup budget', () => {
  it('only denials spend it: allowed lookups are refunded', async () => {
    const { limits, metrics, advance } = setup();
    for (let i = 0; i < 100; i++) {
      expect(limits.takeLookup('a')).toBeUndefined();
      limits.refundLookup('a'); // allowed
    }
    for (let i = 0; i < 3; i++) expect(limits.takeLookup('a')).toBeUndefined(); // denied ×3
    expect(limits.takeLookup('a')).toEqual({ status: 429, reason: 'address_rate_limited' });
    expect(limits.takeLookup('b')).toBeUndefined(); // other addresses unaffected
    advance(100); // one token at 10/s
    expect(limits.takeLookup('a')).toBeUndefined();
    expect(limits.takeLookup('a')).toEqual({ status: 429, reason: 'address_rate_limited' });
    expect(await rejections(metrics, 'address_rate_limited')).toBe(2);
  });

  it('in-flight lookups count against it before they are answered', () => {
    const { limits } = setup();
    const taken = Array.from({ length: 10 }, () => limits.takeLookup('a') === undefined);
    expect(taken.filter(Boolean).length).toBe(3);
  });

  it('rate 0 means no budget and no state', () => {
    const { limits } = setup({ deniedConnectRatePerAddress: 0 });
    for (let i = 0; i < 1000; i++) expect(limits.takeLookup('a')).toBeUndefined();
    expect(limits.stats().lookupBuckets).toBe(0);
  });

  it('stays bounded under address churn', () => {
    const { limits } = setup({ maxAddresses: 100 });
    for (let i = 0; i < 5000; i++) limits.takeLookup(`a${i}`);
    expect(limits.stats().lookupBuckets).toBeLessThanOrEqual(100);
  });
});
