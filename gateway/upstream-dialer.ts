/**
 * Resolve a destination to the addresses we may dial, then open TCP to one of them. The address guard
 * runs on every resolved address and the socket is opened to that exact literal, so there is no second
 * lookup between the check and the dial for DNS rebinding to slip into. One deadline
 * (upstream.connect_timeout_ms) covers resolution and every connect attempt.
 *
 * A name is looked up as the absolute name `name.`: the resolver's search domains (and ndots) never
 * apply, so a grant for api.example.com can never be answered by api.example.com.corp.internal
 * (docs/contract.md, "Dialing"). The price: on glibc the hosts file does not match `name.`, so a
 * name known only from /etc/hosts does not resolve; point an [upstream] override at an IP literal
 * instead. `localhost` and `*.localhost` are loopback without any lookup (RFC 6761 §6.3).
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP, Socket, type SocketConstructorOpts } from 'node:net';
import type { DuplexOptions } from 'node:stream';
import type { Destination } from '../core/destination.js';
import { errorText } from '../core/error-text.js';
import { formatHostPort, type HostPort } from '../core/host-port.js';
import type { AddressGuard } from './address-guard.js';

export type ResolveFailureReason = 'dns' | 'destination_address_denied';
export type ConnectFailureReason = 'timeout' | 'refused' | 'unreachable' | 'reset' | 'cancelled' | 'error';
export type DialFailureReason = ResolveFailureReason | ConnectFailureReason;

export type Resolution =
  | {
      readonly ok: true;
      /** What was looked up: the destination host or its override. */
      readonly target: HostPort;
      /** Permitted addresses in resolver order; never empty. */
      readonly addresses: readonly string[];
      readonly deadline: number;
    }
  | { readonly ok: false; readonly reason: ResolveFailureReason; readonly detail: string };

export type Connection =
  | {
      readonly ok: true;
      readonly socket: Socket;
      readonly address: string;
      /**
       * `ip:port` of every address tried, in order; the last is the socket's (tunnel receipts). Empty
       * unless DialerOptions.recordDialled.
       */
      readonly dialled: readonly string[];
    }
  | { readonly ok: false; readonly reason: ConnectFailureReason; readonly detail: string };

export type LookupFn = (host: string) => Promise<readonly string[]>;

export type DialerOptions = {
  readonly guard: AddressGuard;
  readonly overrides: ReadonlyMap<string, HostPort>;
  readonly connectTimeoutMs: number;
  /** Tests swap the resolver; the default is the system resolver (getaddrinfo), as curl uses. */
  readonly lookup?: LookupFn;
  /** Fill Connection.dialled (receipts are on); otherwise it is always empty and costs nothing. */
  readonly recordDialled?: boolean;
};

const NOTHING_DIALLED: readonly string[] = Object.freeze([]);

/**
 * How many bytes from the client may wait in an upstream socket's write buffer before the tunnel stops
 * reading the client's stream (tunnel.ts). Node's default (16 KiB) is one HTTP/2 DATA frame, so write()
 * returned false after every frame and the tunnel paused and resumed per frame, which also defeated the
 * tunnel's cork: the corked writes never grew past one frame. This is a bound, not an allocation: an idle
 * tunnel buffers nothing.
 */
export const UPSTREAM_WRITE_HIGH_WATER_MARK = 1024 * 1024;

// net.Socket passes the Duplex options through; @types/node's SocketConstructorOpts omits them.
const SOCKET_OPTIONS: SocketConstructorOpts & DuplexOptions = {
  allowHalfOpen: true,
  writableHighWaterMark: UPSTREAM_WRITE_HIGH_WATER_MARK,
};

async function systemLookup(host: string): Promise<readonly string[]> {
  const found = await dnsLookup(host, { all: true, verbatim: true });
  return found.map((a) => a.address);
}

export class UpstreamDialer {
  private readonly lookup: LookupFn;

  constructor(private readonly options: DialerOptions) {
    this.lookup = options.lookup ?? systemLookup;
  }

  /** Synchronous when there is nothing to look up (an IP literal, or an override to one). */
  resolve(destination: Destination): Resolution | Promise<Resolution> {
    const deadline = Date.now() + this.options.connectTimeoutMs;
    const target = this.options.overrides.get(destination.normalized) ?? {
      host: destination.host,
      port: destination.port,
    };
    if (isIP(target.host) !== 0) return this.guarded(target, [target.host], deadline);
    if (isLocalhost(target.host)) return this.guarded(target, LOOPBACK, deadline);
    return this.lookupAndGuard(target, deadline);
  }

  private async lookupAndGuard(target: HostPort, deadline: number): Promise<Resolution> {
    const name = absoluteName(target.host);
    let addresses: readonly string[];
    try {
      addresses = await withDeadline(this.lookup(name), deadline);
    } catch (err) {
      return { ok: false, reason: 'dns', detail: `cannot resolve ${name}: ${errorText(err)}` };
    }
    if (addresses.length === 0) return { ok: false, reason: 'dns', detail: `${name} has no address` };
    return this.guarded(target, addresses, deadline);
  }

  private guarded(target: HostPort, addresses: readonly string[], deadline: number): Resolution {
    const permitted = addresses.filter((a) => this.options.guard.permits(a));
    if (permitted.length === 0) {
      return {
        ok: false,
        reason: 'destination_address_denied',
        detail: `${target.host} resolves only to denied addresses (${addresses.join(', ')})`,
      };
    }
    return { ok: true, target, addresses: permitted, deadline };
  }

  /**
   * Try each permitted address in turn until one accepts. Each attempt gets an equal share of what is
   * left of the deadline, so one black-holed address cannot use up the time of the ones after it.
   */
  async connect(resolution: Resolution & { ok: true }, signal?: AbortSignal): Promise<Connection> {
    const { addresses, target, deadline } = resolution;
    let last: Connection & { ok: false } = { ok: false, reason: 'timeout', detail: 'connect timed out' };
    for (let i = 0; i < addresses.length; i++) {
      if (signal?.aborted) return { ok: false, reason: 'cancelled', detail: 'client went away' };
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      const address = addresses[i] as string;
      const attempt = await connectOnce(address, target.port, remaining / (addresses.length - i), signal);
      if (attempt.ok) {
        const dialled =
          this.options.recordDialled === true
            ? addresses.slice(0, i + 1).map((a) => formatHostPort(a, target.port))
            : NOTHING_DIALLED;
        return { ...attempt, dialled };
      }
      last = { ...attempt, detail: `${formatHostPort(address, target.port)}: ${attempt.detail}` };
      if (attempt.reason === 'cancelled') return last;
    }
    if (last.reason === 'timeout' && deadline - Date.now() <= 0) {
      return {
        ok: false,
        reason: 'timeout',
        detail: `${last.detail} (deadline ${this.options.connectTimeoutMs} ms)`,
      };
    }
    return last;
  }
}

type Attempt =
  | { readonly ok: true; readonly socket: Socket; readonly address: string }
  | (Connection & { ok: false });

function connectOnce(
  address: string,
  port: number,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<Attempt> {
  return new Promise((resolve) => {
    // allowHalfOpen: CONNECT half-close (docs/contract.md "Tunnel end") needs each direction to end
    // independently. The host is the literal the guard approved, so net does no lookup of its own.
    // writableHighWaterMark: see UPSTREAM_WRITE_HIGH_WATER_MARK.
    const socket = new Socket(SOCKET_OPTIONS);
    let settled = false;
    const finish = (result: Attempt) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.removeListener('connect', onConnect);
      socket.removeListener('error', onError);
      if (!result.ok) socket.destroy();
      resolve(result);
    };
    const onConnect = () => {
      socket.setNoDelay(true);
      finish({ ok: true, socket, address });
    };
    const onError = (err: NodeJS.ErrnoException) =>
      finish({ ok: false, reason: classify(err), detail: errorText(err) });
    const onAbort = () => finish({ ok: false, reason: 'cancelled', detail: 'client went away' });
    const timer = setTimeout(
      () => finish({ ok: false, reason: 'timeout', detail: `no answer within ${Math.round(timeoutMs)} ms` }),
      timeoutMs,
    );
    socket.once('connect', onConnect);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.connect({ host: address, port });
  });
}

function classify(err: NodeJS.ErrnoException): ConnectFailureReason {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'refused';
    case 'ETIMEDOUT':
      return 'timeout';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return 'unreachable';
    case 'ECONNRESET':
      return 'reset';
    default:
      return 'error';
  }
}

const LOOPBACK: readonly string[] = ['127.0.0.1', '::1'];

function isLocalhost(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost');
}

/** `name.`: the form no resolver extends with a search domain (a destination never ends in a dot). */
export function absoluteName(host: string): string {
  return `${host}.`;
}

function withDeadline<T>(promise: Promise<T>, deadline: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('lookup timed out')), Math.max(0, deadline - Date.now()));
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}
