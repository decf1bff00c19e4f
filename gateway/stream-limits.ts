/**
 * The two HTTP/2 stream limits the gateway enforces itself because node/nghttp2 do not (or not in
 * time): the request header list size and the client reset budget (config.example.toml `[http2]`).
 * Kept apart from the listener (server.ts) so each abuse rule is in one place.
 */
import { constants, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { GatewayConfig } from './config.js';
import { type Connection, endAfterGoaway, GOAWAY_LINGER_MS } from './server-connection.js';
import type { Logger } from './telemetry.js';
import { gatewayReset, isGatewayReset } from './tunnel.js';

const { NGHTTP2_NO_ERROR, NGHTTP2_ENHANCE_YOUR_CALM } = constants;

/** The window http2.max_resets_per_10s counts over. */
const RESET_WINDOW_MS = 10_000;

export type StreamLimitsDeps = {
  readonly config: GatewayConfig;
  readonly logger: Logger;
};

export class StreamLimits {
  constructor(private readonly deps: StreamLimitsDeps) {}

  /**
   * http2.max_header_list_bytes is advertised in SETTINGS, but node/nghttp2 enforce it only once the
   * client has ACKed those SETTINGS: a request sent in the client's first flight (or by a client that
   * never ACKs) is accepted with a header list far over it (64 KiB in the issue #7 abuse test). Enforce
   * it here too, with the same answer node gives after the ACK (RST_STREAM ENHANCE_YOUR_CALM). Memory
   * while such a block is buffered stays under http2.max_session_memory_mb. False: the stream is reset.
   */
  admitHeaders(
    c: Connection,
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    rawHeaders: string[] | undefined,
  ): boolean {
    const headerBytes = headerListBytes(rawHeaders, headers);
    if (headerBytes <= this.deps.config.http2.maxHeaderListBytes) return true;
    this.deps.logger.debug(
      { source_peer_addr: c.peerAddr, header_list_bytes: headerBytes },
      'request header list too large; stream reset',
    );
    stream.on('error', ignoreError); // a non-zero close emits 'error'; unhandled, it kills the process
    gatewayReset(stream, NGHTTP2_ENHANCE_YOUR_CALM);
    return false;
  }

  /**
   * Rapid-reset protection with our own budget: only streams the client cancelled count, never the
   * ones the gateway reset or the ones that ended with END_STREAM both ways.
   */
  streamClosed(c: Connection, stream: ServerHttp2Stream): void {
    const clientReset = !isGatewayReset(stream) && (stream.rstCode !== NGHTTP2_NO_ERROR || stream.aborted);
    if (!clientReset) return;
    const now = Date.now();
    if (now - c.resetWindowStart > RESET_WINDOW_MS) {
      c.resetWindowStart = now;
      c.resets = 0;
    }
    c.resets++;
    const { maxResetsPer10s } = this.deps.config.http2;
    if (c.resets > maxResetsPer10s && !c.goingAway) {
      c.goingAway = true;
      this.deps.logger.warn(
        {
          source_identity: c.origin.identity.ok ? c.origin.identity.peer.identity : null,
          source_peer_addr: c.peerAddr,
          resets: c.resets,
          max_resets_per_10s: maxResetsPer10s,
        },
        'too many stream resets; closing connection (GOAWAY ENHANCE_YOUR_CALM)',
      );
      // Last stream id 0: nghttp2 ignores every stream the client opens from now on.
      c.session.goaway(NGHTTP2_ENHANCE_YOUR_CALM, 0);
      setTimeout(endAfterGoaway, GOAWAY_LINGER_MS, c.session).unref();
    }
  }
}

function ignoreError(): void {}

/** Header list size as SETTINGS_MAX_HEADER_LIST_SIZE counts it: name + value + 32 per field (RFC 9113 §6.5.2). */
function headerListBytes(rawHeaders: string[] | undefined, headers: IncomingHttpHeaders): number {
  let n = 0;
  if (rawHeaders !== undefined) {
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      n += Buffer.byteLength(rawHeaders[i]!) + Buffer.byteLength(rawHeaders[i + 1]!) + 32;
    }
    return n;
  }
  for (const [name, value] of Object.entries(headers)) {
    for (const v of Array.isArray(value) ? value : [value ?? '']) {
      n += Buffer.byteLength(name) + Buffer.byteLength(String(v)) + 32;
    }
  }
  return n;
}
