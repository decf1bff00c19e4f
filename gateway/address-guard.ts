/**
 * SSRF guard on the address actually dialled (after DNS), so a name that resolves, or re-resolves, to a
 * metadata or link-local address is refused no matter what the grant said. An explicit allow list wins
 * over the deny list (lab set-ups such as the demo's loopback mocks).
 *
 * Families stay apart: an IPv4 rule judges IPv4 addresses and an IPv6 rule IPv6 ones, except that an
 * IPv4-mapped address (::ffff:a.b.c.d, in any spelling) is judged as the IPv4 address it is, because
 * the kernel delivers it there. Other IPv6 forms that embed an IPv4 address (IPv4-compatible ::/96,
 * IPv4-translated ::ffff:0:0:0/96, 6to4 2002::/16, NAT64) are IPv6 destinations reached through
 * whatever translates them, so an allow of the IPv4 address does not allow them: they are denied by
 * default and allowed only by listing the IPv6 prefix (docs/contract.md, "Dialing").
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { LRUCache } from 'lru-cache';

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
  const v4 = family === 'ipv6' && prefix >= 96 ? mappedIPv4(address) : undefined;
  if (v4 !== undefined) {
    // Mapped addresses are judged as IPv4, so this rule would never match anything.
    throw new Error(
      `${JSON.stringify(text)}: IPv4-mapped addresses are checked as IPv4; write ${v4}/${prefix - 96}`,
    );
  }
  return { text: text.trim(), address, prefix, family };
}

/** The IPv4 address an IPv4-mapped IPv6 address (::ffff:a.b.c.d, any spelling) stands for, else undefined. */
export function mappedIPv4(ip: string): string | undefined {
  if (!isIPv6(ip)) return undefined;
  let canonical: string;
  try {
    // The WHATWG serializer (as in core/destination.ts) gives every spelling one form: ::ffff:7f00:1.
    canonical = new URL(`http://[${ip}]/`).hostname;
  } catch {
    return undefined;
  }
  const m = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\]$/.exec(canonical);
  if (m === null) return undefined;
  const hi = Number.parseInt(m[1] as string, 16);
  const lo = Number.parseInt(m[2] as string, 16);
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

/** Verdicts remembered; the rules never change in a process, so a remembered verdict never goes stale. */
export const VERDICT_CACHE_ENTRIES = 4096;
// lru-cache's get() defaults its options to a fresh {}; one shared object keeps a hit allocation-free.
const GET_OPTIONS: LRUCache.GetOptions<string, boolean, unknown> = {};

export class AddressGuard {
  // One list per family: node's BlockList matches an IPv6 rule such as ::ffff:0:0/96 against every IPv4
  // address, which would blur the per-family rules above.
  private readonly deny4 = new BlockList();
  private readonly deny6 = new BlockList();
  private readonly allow4 = new BlockList();
  private readonly allow6 = new BlockList();
  // BlockList.check builds a SocketAddress and walks every rule on each call; a gateway dials the same
  // few addresses over and over. Bounded like every other cache here (lru-cache): a destination that
  // resolves to ever-new addresses evicts the least recently dialled, not the agents' few.
  private readonly verdicts = new LRUCache<string, boolean>({ max: VERDICT_CACHE_ENTRIES });

  constructor(deny: readonly Cidr[], allow: readonly Cidr[]) {
    for (const c of deny)
      (c.family === 'ipv4' ? this.deny4 : this.deny6).addSubnet(c.address, c.prefix, c.family);
    for (const c of allow)
      (c.family === 'ipv4' ? this.allow4 : this.allow6).addSubnet(c.address, c.prefix, c.family);
  }

  /** True when `ip` (a literal IPv4 or IPv6 address) may be dialled. */
  permits(ip: string): boolean {
    let verdict = this.verdicts.get(ip, GET_OPTIONS);
    if (verdict === undefined) {
      verdict = this.check(ip);
      this.verdicts.set(ip, verdict);
    }
    return verdict;
  }

  /** Verdicts remembered now (at most VERDICT_CACHE_ENTRIES). */
  get cachedVerdicts(): number {
    return this.verdicts.size;
  }

  private check(ip: string): boolean {
    const v4 = isIPv4(ip) ? ip : mappedIPv4(ip);
    if (v4 !== undefined) return this.allow4.check(v4, 'ipv4') || !this.deny4.check(v4, 'ipv4');
    if (!isIPv6(ip)) return false;
    return this.allow6.check(ip, 'ipv6') || !this.deny6.check(ip, 'ipv6');
  }
}
