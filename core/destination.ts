/**
 * Destination normalization (docs/contract.md "Destination normalization"). The gateway, the registry CLI and
 * the tests all call this one function, so a grant written by an admin and a CONNECT authority sent by an
 * agent compare equal exactly when they name the same destination.
 *
 * Canonical form, decided here once:
 * - hostnames: IDNA to ASCII (A-labels, via WHATWG `domainToASCII`), lowercase; a trailing dot is
 *   refused rather than stripped, because `name.` and `name` resolve differently under DNS search
 *   domains and a grant must not silently cover both;
 * - IPv4: only the strict dotted quad without leading zeros; shorthand forms such as `127.1` or
 *   `0x7f.0.0.1` are refused (they are classic allow-list bypasses and no real client sends them);
 * - IPv6: RFC 5952 compressed lowercase (`[0:0::1]` → `[::1]`), always bracketed; zone ids refused;
 * - port: decimal 1..65535 written with at most five digits, leading zeros dropped (`:0443` → `:443`);
 *   no port → 443.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { domainToASCII } from 'node:url';

export type Destination = {
  /** `host:port` or `[v6]:port`: the string stored in grants and compared at CONNECT time. */
  readonly normalized: string;
  /** Host as dialled: a DNS name, an IPv4 literal, or an IPv6 literal without brackets. */
  readonly host: string;
  readonly port: number;
  readonly kind: 'dns' | 'ipv4' | 'ipv6';
};

export class InvalidDestinationError extends Error {
  constructor(
    readonly input: string,
    readonly why: string,
  ) {
    super(`invalid destination ${JSON.stringify(input)}: ${why}`);
    this.name = 'InvalidDestinationError';
  }
}

const DEFAULT_PORT = 443;
const MAX_HOSTNAME_LENGTH = 253;
const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;
const STRICT_IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
// A last label that is numeric (or 0x-hex) makes the WHATWG host parser read the name as IPv4.
const NUMERIC_LAST_LABEL = /(^|\.)(0x[0-9a-f]*|\d+)$/i;

/** Normalize or throw InvalidDestinationError naming what is wrong. */
export function normalizeDestination(input: string): Destination {
  const text = input.trim();
  if (text === '') throw new InvalidDestinationError(input, 'empty');
  if (text.startsWith('[')) return bracketed(input, text);

  const colons = text.split(':').length - 1;
  if (colons > 1) return ipv6(input, text, DEFAULT_PORT);

  const [hostPart, portPart] = colons === 1 ? splitOnce(text, ':') : [text, undefined];
  const port = portPart === undefined ? DEFAULT_PORT : parsePort(input, portPart);
  return hostname(input, hostPart, port);
}

/** Boolean form for call sites that only filter. */
export function tryNormalizeDestination(input: string): Destination | undefined {
  try {
    return normalizeDestination(input);
  } catch (err) {
    if (err instanceof InvalidDestinationError) return undefined;
    throw err;
  }
}

function bracketed(input: string, text: string): Destination {
  const close = text.indexOf(']');
  if (close < 0) throw new InvalidDestinationError(input, 'unterminated "[" in IPv6 literal');
  const inner = text.slice(1, close);
  const rest = text.slice(close + 1);
  if (rest === '') return ipv6(input, inner, DEFAULT_PORT);
  if (!rest.startsWith(':')) throw new InvalidDestinationError(input, 'unexpected text after "]"');
  return ipv6(input, inner, parsePort(input, rest.slice(1)));
}

function ipv6(input: string, literal: string, port: number): Destination {
  if (literal.includes('%')) throw new InvalidDestinationError(input, 'IPv6 zone ids are not allowed');
  if (!isIPv6(literal))
    throw new InvalidDestinationError(input, `${JSON.stringify(literal)} is not an IPv6 address`);
  // The WHATWG URL serializer is RFC 5952: lowercase, longest zero run compressed.
  const canonical = new URL(`http://[${literal}]/`).hostname.slice(1, -1);
  return { normalized: `[${canonical}]:${port}`, host: canonical, port, kind: 'ipv6' };
}

function hostname(input: string, raw: string, port: number): Destination {
  if (raw === '') throw new InvalidDestinationError(input, 'empty host');
  if (raw.endsWith('.')) throw new InvalidDestinationError(input, 'trailing dot in host name');
  if (/[\s/\\?#@[\]%]/.test(raw)) throw new InvalidDestinationError(input, 'forbidden character in host');
  if (STRICT_IPV4.test(raw)) return { normalized: `${raw}:${port}`, host: raw, port, kind: 'ipv4' };
  if (NUMERIC_LAST_LABEL.test(raw)) {
    throw new InvalidDestinationError(input, 'IPv4 address not in strict dotted-quad form');
  }
  const ascii = domainToASCII(raw);
  if (ascii === '') throw new InvalidDestinationError(input, 'not a valid host name');
  if (isIPv4(ascii)) throw new InvalidDestinationError(input, 'IPv4 address not in strict dotted-quad form');
  if (ascii.length > MAX_HOSTNAME_LENGTH) throw new InvalidDestinationError(input, 'host name too long');
  for (const label of ascii.split('.')) {
    if (!LABEL.test(label))
      throw new InvalidDestinationError(input, `invalid host label ${JSON.stringify(label)}`);
  }
  return { normalized: `${ascii}:${port}`, host: ascii, port, kind: 'dns' };
}

function parsePort(input: string, text: string): number {
  if (!/^\d{1,5}$/.test(text))
    throw new InvalidDestinationError(input, `port ${JSON.stringify(text)} is not a number`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw new InvalidDestinationError(input, `port ${port} is outside 1..65535`);
  return port;
}

function splitOnce(text: string, sep: string): [string, string] {
  const at = text.indexOf(sep);
  return [text.slice(0, at), text.slice(at + 1)];
}
