/**
 * Per-source-address budgets: what one network address may cost the gateway before it has proven
 * anything. Anyone who can reach the port can finish TLS with a self-signed certificate and any
 * identity, and each CONNECT from an unknown key may cost a registry lookup; per-identity limits do not
 * help against a client that mints a new key per connection. So, per address (docs/contract.md
 * "Admission limits"):
 *
 * - open TCP connections (`limits.max_connections_per_address`);
 * - open connections that have not yet had an allowed CONNECT (`limits.max_unproven_connections_per_address`);
 * - CONNECTs that may reach the registry from such connections, as a token bucket
 *   (`limits.denied_connect_rate_per_address` / `_burst_`): a token is taken before authorization and
 *   given back when the CONNECT is allowed, so only denials spend it. A connection that has had an
 *   allowed CONNECT is exempt, so a proven sidecar behind the same NAT as an attacker keeps working.
 *
 * The connection counters exist only while connections are open (bounded by limits.max_connections);
 * the buckets live in an LRU.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { LimitRejection } from './authorization.js';
import { TokenBuckets } from './limits.js';
import type { GatewayMetrics } from './metrics.js';

export type AddressLimitsOptions = {
  readonly maxConnectionsPerAddress: number;
  readonly maxUnprovenConnectionsPerAddress: number;
  /** Denied CONNECTs per second per address (token bucket refill); 0 = no budget. */
  readonly deniedConnectRatePerAddress: number;
  readonly deniedConnectBurstPerAddress: number;
  readonly metrics?: GatewayMetrics | undefined;
  /** Monotonic milliseconds; injectable for tests. */
  readonly nowMs?: (() => number) | undefined;
  /** Hard cap on remembered buckets. */
  readonly maxAddresses?: number | undefined;
};

/** Why a connection was refused or ended by these limits (agent_gateway_limit_rejections_total). */
export type AddressRejection =
  | 'address_connection_limit'
  | 'unproven_connection_limit'
  | 'unproven_connection_timeout';

const ADDRESS_RATE_LIMITED: LimitRejection = { status: 429, reason: 'address_rate_limited' };

/**
 * The address a budget is charged to. IPv4-mapped IPv6 is the IPv4 address; other IPv6 addresses count
 * by their /64, since a single host is routinely given a whole /64 and could rotate through it.
 */
export function addressKey(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined || remoteAddress === '') return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remoteAddress)?.[1];
  if (mapped !== undefined && isIPv4(mapped)) return mapped;
  if (!isIPv6(remoteAddress)) return remoteAddress;
  const [head = '', tail = ''] = remoteAddress.toLowerCase().split('::');
  const left = head === '' ? [] : head.split(':');
  const right = remoteAddress.includes('::') ? (tail === '' ? [] : tail.split(':')) : [];
  const groups = [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => (g === '' ? '0' : g.replace(/^0+(?=.)/, '')))
    .join(':')}::/64`;
}

/** Open-count per key; a key exists only while its count is above zero. */
class OpenCounts {
  private readonly counts = new Map<string, number>();

  constructor(private readonly max: number) {}

  /** Count one more; false (nothing counted) when the key is at its maximum. */
  open(key: string): boolean {
    const n = this.counts.get(key) ?? 0;
    if (n >= this.max) return false;
    this.counts.set(key, n + 1);
    return true;
  }

  close(key: string): void {
    const n = (this.counts.get(key) ?? 1) - 1;
    if (n <= 0) this.counts.delete(key);
    else this.counts.set(key, n);
  }

  get size(): number {
    return this.counts.size;
  }
}

/** What the connect handler needs: the lookup budget of a connection that has not proven itself. */
export interface AddressBudget {
  /** Before authorizing a CONNECT from an unproven connection: a rejection when the budget is spent. */
  takeLookup(address: string): LimitRejection | undefined;
  /** The CONNECT was allowed (or never reached the registry): its token comes back. */
  refundLookup(address: string): void;
}

export class AddressLimits implements AddressBudget {
  private readonly connections: OpenCounts;
  private readonly unproven: OpenCounts;
  private readonly lookups: TokenBuckets | undefined;

  constructor(private readonly opts: AddressLimitsOptions) {
    this.connections = new OpenCounts(opts.maxConnectionsPerAddress);
    this.unproven = new OpenCounts(opts.maxUnprovenConnectionsPerAddress);
    if (opts.deniedConnectRatePerAddress > 0) {
      this.lookups = new TokenBuckets(
        opts.deniedConnectRatePerAddress,
        opts.deniedConnectBurstPerAddress,
        opts.maxAddresses ?? 100_000,
        opts.nowMs,
      );
    }
  }

  /** A new TCP connection; false = refuse it (over max_connections_per_address). */
  openConnection(address: string): boolean {
    if (this.connections.open(address)) return true;
    this.count('address_connection_limit');
    return false;
  }

  closeConnection(address: string): void {
    this.connections.close(address);
  }

  /** A new HTTP/2 session, unproven until its first allowed CONNECT; false = refuse it. */
  openUnproven(address: string): boolean {
    if (this.unproven.open(address)) return true;
    this.count('unproven_connection_limit');
    return false;
  }

  /** The session had its first allowed CONNECT, or closed. Call once per successful openUnproven. */
  closeUnproven(address: string): void {
    this.unproven.close(address);
  }

  takeLookup(address: string): LimitRejection | undefined {
    if (this.lookups === undefined || this.lookups.take(address)) return undefined;
    this.opts.metrics?.limitRejections.inc({ reason: ADDRESS_RATE_LIMITED.reason });
    return ADDRESS_RATE_LIMITED;
  }

  refundLookup(address: string): void {
    this.lookups?.refund(address);
  }

  /** A connection ended for an address limit that is not a refusal at open (the unproven deadline). */
  count(reason: AddressRejection): void {
    this.opts.metrics?.limitRejections.inc({ reason });
  }

  stats(): { addressesConnected: number; addressesUnproven: number; lookupBuckets: number } {
    return {
      addressesConnected: this.connections.size,
      addressesUnproven: this.unproven.size,
      lookupBuckets: this.lookups?.size ?? 0,
    };
  }
}
