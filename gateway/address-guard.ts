/**
 * SSRF guard on the address actually dialled (after DNS), so a name that resolves, or re-resolves, to a
 * metadata or link-local address is refused no matter what the grant said. An explicit allow list wins
 * over the deny list (lab set-ups such as the demo's loopback mocks).
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';

export type Cidr = {
  readonly text: string;
  readonly address: string;
  readonly prefix: number;
  readonly family: 'ipv4' | 'ipv6';
};

export function parseCidr(text: string): Cidr {
  const [address, prefixText, extra] = text.trim().split('/');
  if (address === undefined || extra !== undefined)
    throw new Error(`${JSON.stringify(text)} is not a CIDR such as 10.0.0.0/8`);
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : undefined;
  if (family === undefined)
    throw new Error(`${JSON.stringify(text)}: ${JSON.stringify(address)} is not an IP address`);
  const max = family === 'ipv4' ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!/^\d{1,3}$/.test(prefixText ?? String(max)) || prefix > max) {
    throw new Error(`${JSON.stringify(text)}: prefix must be 0..${max}`);
  }
  return { text: text.trim(), address, prefix, family };
}

/** Verdicts remembered; the rules never change in a process, so a remembered verdict never goes stale. */
const VERDICT_CACHE_ENTRIES = 4096;

export class AddressGuard {
  private readonly deny = new BlockList();
  private readonly allow = new BlockList();
  // BlockList.check builds a SocketAddress and walks every rule on each call; a gateway dials the same
  // few addresses over and over.
  private readonly verdicts = new Map<string, boolean>();

  constructor(deny: readonly Cidr[], allow: readonly Cidr[]) {
    for (const c of deny) this.deny.addSubnet(c.address, c.prefix, c.family);
    for (const c of allow) this.allow.addSubnet(c.address, c.prefix, c.family);
  }

  /** True when `ip` (a literal IPv4 or IPv6 address) may be dialled. */
  permits(ip: string): boolean {
    let verdict = this.verdicts.get(ip);
    if (verdict === undefined) {
      verdict = this.check(ip);
      if (this.verdicts.size >= VERDICT_CACHE_ENTRIES) this.verdicts.clear();
      this.verdicts.set(ip, verdict);
    }
    return verdict;
  }

  private check(ip: string): boolean {
    const family = isIPv4(ip) ? 'ipv4' : 'ipv6';
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) is checked as the IPv4 address it reaches.
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)?.[1];
    if (mapped !== undefined) return this.check(mapped);
    if (this.allow.check(ip, family)) return true;
    return !this.deny.check(ip, family);
  }
}
