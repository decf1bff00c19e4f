/**
 * Per-connection state of the listener (server.ts): the Connection object, how sockets, sessions and
 * streams find it, and the timers and close paths that act on one connection.
 */
import { constants, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { formatHostPort } from '../core/host-port.js';
import type { ConnectionProof, StreamOrigin } from './connect-handler.js';
import { sessionIdentity } from './tls-identity.js';

const { NGHTTP2_ENHANCE_YOUR_CALM } = constants;

/**
 * Between the GOAWAY to a client over its reset budget and closing its connection. Destroying at once
 * closed the socket while that client was still sending, and the kernel answers unread data with a TCP
 * RST, which can discard the GOAWAY before the client reads it: the client saw a reset, not why.
 */
export const GOAWAY_LINGER_MS = 1_000;

/** What a Connection reports to the server that owns it. */
export interface ConnectionOwner {
  connectionProven(c: Connection): void;
  connectionClosed(c: Connection): void;
  streamClosed(c: Connection, stream: ServerHttp2Stream): void;
  socketClosed(address: string): void;
}

/** What the gateway keeps per HTTP/2 connection. One object, no per-stream closures. */
export class Connection implements ConnectionProof {
  openStreams = 0;
  resets = 0;
  resetWindowStart = 0;
  /** Over the reset budget: GOAWAY sent, the connection ends after GOAWAY_LINGER_MS. */
  goingAway = false;
  idleTimer: NodeJS.Timeout | undefined;
  /** Has had an allowed CONNECT (connect-handler.ts ConnectionProof). */
  proven = false;
  /** Holds one of its address's max_unproven_connections_per_address slots (unproven-connections.ts). */
  holdsUnprovenSlot = false;
  unprovenTimer: NodeJS.Timeout | undefined;
  private identified: StreamOrigin | undefined;

  constructor(
    readonly owner: ConnectionOwner,
    readonly session: ServerHttp2Session,
    readonly peerAddr: string,
    readonly addressKey: string,
    private readonly oid: string,
  ) {}

  /**
   * Identity is read at the first stream, not at the handshake: a connection that never asks for a
   * tunnel never costs a certificate parse.
   */
  get origin(): StreamOrigin {
    this.identified ??= {
      identity: sessionIdentity(this.session, this.oid),
      peerAddr: this.peerAddr,
      addressKey: this.addressKey,
      connection: this,
    };
    return this.identified;
  }

  markProven(): void {
    if (this.proven) return;
    this.proven = true;
    this.owner.connectionProven(this);
  }
}

export const CONNECTION = Symbol('agent_gateway.connection');
export type ConnectionSlot = { [CONNECTION]?: Connection };
/** On an accepted TCP socket: the address its max_connections_per_address slot is counted under. */
export const ADDRESS_SLOT = Symbol('agent_gateway.address_slot');
export type AddressSlotSocket = Socket & {
  [ADDRESS_SLOT]?: { readonly owner: ConnectionOwner; readonly address: string };
};

export function endAfterGoaway(session: ServerHttp2Session, why = 'too many stream resets'): void {
  // destroy(undefined, code) would send NO_ERROR: node defaults a missing error to code 0.
  if (!session.destroyed) session.destroy(new Error(why), NGHTTP2_ENHANCE_YOUR_CALM);
}

export function onIdleTimer(c: Connection): void {
  if (c.openStreams > 0 || c.session.closed || c.session.destroyed) return;
  // GOAWAY(NO_ERROR): the client reconnects when it next needs a tunnel.
  c.session.close();
}

export function onSocketClose(this: AddressSlotSocket): void {
  const slot = this[ADDRESS_SLOT];
  if (slot !== undefined) slot.owner.socketClosed(slot.address);
}

export function onSessionClose(this: ServerHttp2Session & ConnectionSlot): void {
  const c = this[CONNECTION];
  if (c !== undefined) c.owner.connectionClosed(c);
}

export function onStreamClose(this: ServerHttp2Stream & ConnectionSlot): void {
  const c = this[CONNECTION];
  if (c !== undefined) c.owner.streamClosed(c, this);
}

export function peerAddrOf(socket: { remoteAddress?: string; remotePort?: number }): string {
  const address = socket.remoteAddress ?? 'unknown';
  return formatHostPort(address, socket.remotePort ?? 0);
}
