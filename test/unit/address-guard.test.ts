import { describe, expect, it } from 'vitest';
import { AddressGuard, parseCidr, VERDICT_CACHE_ENTRIES } from '../../gateway/address-guard.js';
import { DEFAULT_DENY_CIDRS } from '../../gateway/config.js';

const defaults = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), []);

describe('default address guard', () => {
  it.each([
    ['127.0.0.1', 'loopback: the admin port, a local database'],
    ['127.255.0.9', 'all of 127/8'],
    ['::1', 'IPv6 loopback'],
    ['::ffff:127.0.0.1', 'IPv4-mapped loopback'],
    ['10.1.2.3', 'RFC 1918'],
    ['172.31.255.1', 'RFC 1918'],
    ['192.168.1.1', 'RFC 1918'],
    ['100.64.0.1', 'shared address space'],
    ['169.254.169.254', 'cloud metadata'],
    ['fd00:ec2::254', 'AWS IPv6 metadata'],
    ['fd12:3456::1', 'unique local'],
    ['fe80::1', 'link-local'],
    ['64:ff9b::7f00:1', 'NAT64 embedding 127.0.0.1'],
    ['::ffff:7f00:1', 'IPv4-mapped loopback, hex spelling'],
    ['::FFFF:a9fe:a9fe', 'IPv4-mapped metadata address, upper case'],
    ['0:0:0:0:0:ffff:10.0.0.1', 'IPv4-mapped RFC 1918, long spelling'],
    ['::127.0.0.1', 'IPv4-compatible loopback'],
    ['::7f00:1', 'IPv4-compatible loopback, hex spelling'],
    ['::8.8.8.8', 'IPv4-compatible, even of a public address'],
    ['::ffff:0:7f00:1', 'IPv4-translated loopback'],
    ['::ffff:0:808:808', 'IPv4-translated, even of a public address'],
    ['2002:7f00:1::', '6to4 embedding 127.0.0.1'],
    ['2002:808:808::1', '6to4, even of a public address'],
    ['2001:0:4136:e378:8000:63bf:80ff:fffe', 'Teredo, whose client address 127.0.0.1 sits in it inverted'],
    ['2001:0:5ef5:79fd::1', 'Teredo, any server'],
    ['0.0.0.0', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['ff02::1', 'multicast'],
    ['255.255.255.255', 'broadcast'],
  ])('denies %s (%s)', (ip) => {
    expect(defaults.permits(ip)).toBe(false);
  });

  it.each([
    ['93.184.216.34'],
    ['8.8.8.8'],
    ['2606:4700::1111'],
    ['::ffff:8.8.8.8'],
    ['2001:4860:4860::8888'],
  ])('permits public %s', (ip) => {
    expect(defaults.permits(ip)).toBe(true);
  });

  it('lets allow_cidrs override the deny list, and only for the listed range', () => {
    const lab = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), [parseCidr('127.0.0.1/32')]);
    expect(lab.permits('127.0.0.1')).toBe(true);
    expect(lab.permits('127.0.0.2')).toBe(false);
    expect(lab.permits('169.254.169.254')).toBe(false);
  });

  it('judges IPv4-mapped addresses as IPv4: an IPv4 allow covers them, and only them', () => {
    const lab = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), [parseCidr('127.0.0.1/32')]);
    expect(lab.permits('::ffff:127.0.0.1')).toBe(true);
    expect(lab.permits('::ffff:7f00:1')).toBe(true);
    expect(lab.permits('::ffff:7f00:2')).toBe(false);
    // Reached through a translator, not the IPv4 address itself: the IPv4 allow does not cover them.
    for (const ip of ['::127.0.0.1', '::7f00:1', '::ffff:0:7f00:1', '2002:7f00:1::', '64:ff9b::7f00:1']) {
      expect(lab.permits(ip), ip).toBe(false);
    }
  });

  it('allows an IPv4-embedding form only when its IPv6 prefix is listed in allow_cidrs', () => {
    const lab = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), [parseCidr('2002:7f00:1::/48')]);
    expect(lab.permits('2002:7f00:1::')).toBe(true);
    expect(lab.permits('2002:7f00:2::')).toBe(false);
    expect(lab.permits('127.0.0.1')).toBe(false);
  });

  it('denies a site NAT64 prefix once it is added to deny_cidrs', () => {
    const site = parseCidr('2001:db8:64::/96');
    const guard = new AddressGuard([...DEFAULT_DENY_CIDRS.map(parseCidr), site], []);
    expect(defaults.permits('2001:db8:64::a00:1')).toBe(true);
    expect(guard.permits('2001:db8:64::a00:1')).toBe(false);
    expect(guard.permits('8.8.8.8')).toBe(true);
  });

  it('keeps the families apart: an IPv6 rule never judges an IPv4 address', () => {
    const guard = new AddressGuard([parseCidr('::/0')], []);
    expect(guard.permits('8.8.8.8')).toBe(true);
    expect(guard.permits('2606:4700::1111')).toBe(false);
  });

  it('refuses an IPv4-mapped CIDR, naming the IPv4 CIDR to write instead', () => {
    expect(() => parseCidr('::ffff:0:0/96')).toThrow(/checked as IPv4; write 0\.0\.0\.0\/0/);
    expect(() => parseCidr('::ffff:10.0.0.0/104')).toThrow(/write 10\.0\.0\.0\/8/);
  });

  it.each([['10.0.0.0/33'], ['nonsense'], ['1.2.3.4/8/9'], ['::/129'], ['1.2.3.4/x']])(
    'refuses CIDR %s',
    (text) => {
      expect(() => parseCidr(text)).toThrow();
    },
  );
});

describe('verdict cache', () => {
  // Even i: a public address (permitted); odd i: RFC 1918 (denied).
  const address = (i: number) => `${i % 2 === 0 ? 8 : 10}.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
  const verdictsOf = (guard: AddressGuard, from: number, to: number) => {
    const wrong: string[] = [];
    for (let i = from; i < to; i++) if (guard.permits(address(i)) !== (i % 2 === 0)) wrong.push(address(i));
    return wrong;
  };

  it('remembers a verdict once, however often the address is dialled', () => {
    const guard = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), []);
    for (let n = 0; n < 3; n++) expect(guard.permits('10.0.0.1')).toBe(false);
    expect(guard.cachedVerdicts).toBe(1);
  });

  it('keeps at most VERDICT_CACHE_ENTRIES, the most recently dialled, and judges evicted ones afresh', () => {
    const guard = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), []);
    const extra = 100;
    expect(verdictsOf(guard, 0, VERDICT_CACHE_ENTRIES + extra)).toEqual([]);
    // Unbounded it would hold every address; emptied when full it would hold only the last `extra`.
    expect(guard.cachedVerdicts).toBe(VERDICT_CACHE_ENTRIES);
    // The first addresses were evicted; asked again, each gets the same verdict from the rules.
    expect(verdictsOf(guard, 0, extra)).toEqual([]);
    expect(guard.cachedVerdicts).toBe(VERDICT_CACHE_ENTRIES);
  });
});
