/**
 * Connections that have proven nothing yet (no allowed CONNECT). Anyone who can reach the port can open
 * one with a self-signed certificate, so how many one address may hold, how long each gets and how it
 * ends are one policy, kept here apart from the listener (server.ts) (docs/contract.md "Admission
 * limits"). A connection's first allowed CONNECT ends all of it for that connection: its slot comes
 * back and its stream limit is raised.
 */
import { constants } from 'node:http2';
import type { AddressLimits } from './address-limits.js';
import type { GatewayConfig } from './config.js';
import { type Connection, endAfterGoaway, GOAWAY_LINGER_MS } from './server-connection.js';
import type { Logger } from './telemetry.js';

const { NGHTTP2_ENHANCE_YOUR_CALM } = constants;

/**
 * After a graceful GOAWAY to a connection that has proven nothing (bad certificate, unproven deadline):
 * its streams are only CONNECTs awaiting an answer, so anything still open this much later is stuck.
 */
const UNPROVEN_CLOSE_GRACE_MS = 5_000;

export type UnprovenConnectionsDeps = {
  readonly config: GatewayConfig;
  readonly addressLimits: AddressLimits;
  readonly logger: Logger;
};

/** SETTINGS_MAX_CONCURRENT_STREAMS of a connection until its first allowed CONNECT. */
export function unprovenStreams(config: GatewayConfig): number {
  return Math.min(config.http2.maxConcurrentStreams, config.http2.maxConcurrentStreamsUnproven);
}

export class UnprovenConnections {
  constructor(private readonly deps: UnprovenConnectionsDeps) {}

  /**
   * A new session: it takes one of its address's max_unproven_connections_per_address slots and has
   * server.unproven_connection_timeout_ms to prove itself. False: no slot was free, and the session is
   * already going away.
   */
  admit(c: Connection): boolean {
    const { config, addressLimits, logger } = this.deps;
    if (!addressLimits.openUnproven(c.addressKey)) {
      logger.debug(
        {
          source_peer_addr: c.peerAddr,
          max_unproven_connections_per_address: config.limits.maxUnprovenConnectionsPerAddress,
        },
        'connection refused: max_unproven_connections_per_address reached',
      );
      // The reset budget's way out: ENHANCE_YOUR_CALM says why, and the close follows shortly.
      c.goingAway = true;
      c.session.goaway(NGHTTP2_ENHANCE_YOUR_CALM, 0);
      setTimeout(endAfterGoaway, GOAWAY_LINGER_MS, c.session, 'too many unproven connections').unref();
      return false;
    }
    c.holdsUnprovenSlot = true;
    if (config.server.unprovenConnectionTimeoutMs > 0) {
      c.unprovenTimer = setTimeout(onUnprovenTimer, config.server.unprovenConnectionTimeoutMs, this, c);
      c.unprovenTimer.unref();
    }
    return true;
  }

  /** The connection's first allowed CONNECT: it no longer counts as unproven. */
  proven(c: Connection): void {
    this.release(c);
    const { maxConcurrentStreams } = this.deps.config.http2;
    if (maxConcurrentStreams > unprovenStreams(this.deps.config) && !c.session.destroyed) {
      c.session.settings({ maxConcurrentStreams });
    }
  }

  /** Give back the connection's slot, if it holds one, and stop its deadline (proven or closed). */
  release(c: Connection): void {
    if (c.unprovenTimer !== undefined) clearTimeout(c.unprovenTimer);
    c.unprovenTimer = undefined;
    if (!c.holdsUnprovenSlot) return;
    c.holdsUnprovenSlot = false;
    this.deps.addressLimits.closeUnproven(c.addressKey);
  }

  /**
   * GOAWAY(NO_ERROR) to a connection that cannot or did not prove anything: it keeps no slot for long,
   * and a client that reconnects gets a fresh start. Streams in flight still get their answer.
   */
  close(c: Connection, why: string): void {
    if (c.goingAway || c.session.closed || c.session.destroyed) return;
    c.goingAway = true;
    this.deps.logger.debug({ source_peer_addr: c.peerAddr, why }, 'closing connection (GOAWAY)');
    c.session.close();
    setTimeout(endUnprovenAfterGoaway, UNPROVEN_CLOSE_GRACE_MS, c, why).unref();
  }

  /** @internal server.unproven_connection_timeout_ms passed without an allowed CONNECT. */
  timedOut(c: Connection): void {
    this.deps.addressLimits.count('unproven_connection_timeout');
    this.close(c, 'no allowed CONNECT within server.unproven_connection_timeout_ms');
  }
}

function onUnprovenTimer(owner: UnprovenConnections, c: Connection): void {
  c.unprovenTimer = undefined;
  if (c.proven) return;
  owner.timedOut(c);
}

/**
 * After the GOAWAY to an unproven connection: end it, unless a CONNECT already in flight at the GOAWAY
 * was allowed meanwhile. That tunnel is legitimate; the session ends by itself when its streams do.
 */
function endUnprovenAfterGoaway(c: Connection, why: string): void {
  if (!c.proven) endAfterGoaway(c.session, why);
}
