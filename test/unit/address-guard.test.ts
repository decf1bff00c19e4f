import { describe, expect, it } from 'vitest';
import { AddressGuard, parseCidr } from '../../gateway/address-guard.js';
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
    ['0.0.0.0', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['ff02::1', 'multicast'],
    ['255.255.255.255', 'broadcast'],
  ])('denies %s (%s)', (ip) => {
    expect(defaults.permits(ip)).toBe(false);
  });

  it.each([['93.184.216.34'], ['8.8.8.8'], ['2606:4700::1111'], ['::ffff:8.8.8.8']])(
    'permits public %s',
    (ip) => {
      expect(defaults.permits(ip)).toBe(true);
    },
  );

  it('lets allow_cidrs override the deny list, and only for the listed range', () => {
    const lab = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), [parseCidr('127.0.0.1/32')]);
    expect(lab.permits('127.0.0.1')).toBe(true);
    expect(lab.permits('127.0.0.2')).toBe(false);
    expect(lab.permits('169.254.169.254')).toBe(false);
  });

  it.each([['10.0.0.0/33'], ['nonsense'], ['1.2.3.4/8/9'], ['::/129'], ['1.2.3.4/x']])(
    'refuses CIDR %s',
    (text) => {
      expect(() => parseCidr(text)).toThrow();
    },
  );
});
