/**
 * `host:port` as operators write addresses (config listen/override addresses, sidecar flags, demo
 * services): one parser, so every program accepts the same spellings. IPv6 goes in brackets
 * (`[::1]:8443`); a host has no whitespace, colon, bracket or slash. Callers word the errors, since a
 * config key and a command-line flag name the culprit differently. Not for CONNECT authorities, which
 * core/destination.ts normalizes.
 */
import { isIP } from 'node:net';

export type HostPort = { readonly host: string; readonly port: number };

export type HostPortParse =
  | { readonly ok: true; readonly value: HostPort }
  /** Not `host:port` or `[v6]:port` at all. */
  | { readonly ok: false; readonly problem: 'syntax' }
  /** In brackets but not an IPv6 address. */
  | { readonly ok: false; readonly problem: 'not_ipv6'; readonly host: string }
  | { readonly ok: false; readonly problem: 'port_range'; readonly port: number; readonly min: number };

const HOST_PORT = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s/]+)):(\d{1,5})$/;

/**
 * Surrounding whitespace is ignored. Port 1..65535; `allowPortZero` for a listener that may ask the
 * OS for any port (tests and demos; an operator-facing listener on port 0 would hide where it is).
 */
export function parseHostPort(text: string, opts: { readonly allowPortZero?: boolean } = {}): HostPortParse {
  const m = HOST_PORT.exec(text.trim());
  if (m === null) return { ok: false, problem: 'syntax' };
  const host = (m[1] ?? m[2]) as string;
  if (m[1] !== undefined && isIP(host) !== 6) return { ok: false, problem: 'not_ipv6', host };
  const port = Number(m[3]);
  const min = opts.allowPortZero === true ? 0 : 1;
  if (port < min || port > 65535) return { ok: false, problem: 'port_range', port, min };
  return { ok: true, value: { host, port } };
}

/** The inverse: IPv6 addresses in brackets. */
export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
