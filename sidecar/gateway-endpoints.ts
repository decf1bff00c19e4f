/**
 * The gateways a sidecar may use, in the order it tries them (docs/contract.md "Sidecar"): every
 * `--gateway host:port` in the order given, a name that resolves to several addresses counting as
 * several. Names are resolved again each time the list is walked from its start, so a balancer's or a
 * DNS round-robin's changes are picked up at the next failover without a restart.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { errorText } from '../core/error-text.js';
import { formatHostPort, type HostPort } from '../core/host-port.js';

export type GatewayEndpoint = {
  /** The address dialled. */
  readonly host: string;
  readonly port: number;
  /** Name the certificate must carry (and SNI); undefined = check `host` itself, no SNI for IPs. */
  readonly servername: string | undefined;
  /** As configured, for logs: `gw.example:8443 (10.0.0.2)`. */
  readonly label: string;
};

export type Resolve = (name: string) => Promise<readonly string[]>;

const resolveAll: Resolve = async (name) =>
  (await lookup(name, { all: true, order: 'ipv4first' })).map((a) => a.address);

/**
 * Expand `configured` into endpoints. A name that does not resolve is skipped (and reported through
 * `onUnresolved`) so the others still serve; only when nothing resolves is that an error.
 */
export async function resolveGateways(
  configured: readonly HostPort[],
  gatewayName: string | undefined,
  onUnresolved: (gateway: string, err: unknown) => void,
  resolve: Resolve = resolveAll,
): Promise<GatewayEndpoint[]> {
  const out: GatewayEndpoint[] = [];
  let lastError: unknown;
  for (const g of configured) {
    const configuredText = formatHostPort(g.host, g.port);
    if (isIP(g.host) !== 0) {
      out.push({ host: g.host, port: g.port, servername: gatewayName, label: configuredText });
      continue;
    }
    let addresses: readonly string[];
    try {
      addresses = await resolve(g.host);
    } catch (err) {
      lastError = err;
      onUnresolved(configuredText, err);
      continue;
    }
    const seen = new Set<string>();
    for (const address of addresses) {
      if (seen.has(address)) continue;
      seen.add(address);
      out.push({
        host: address,
        port: g.port,
        // The certificate names the gateway, not the address it resolved to.
        servername: gatewayName ?? g.host,
        label: addresses.length === 1 ? configuredText : `${configuredText} (${address})`,
      });
    }
  }
  if (out.length === 0) {
    throw new Error(`no --gateway address resolves: ${errorText(lastError)}`);
  }
  return out;
}
