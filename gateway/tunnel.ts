/**
 * Bytes both ways between one HTTP/2 CONNECT stream and one upstream TCP socket (RFC 9113 §8.5):
 * backpressure each way, half-close each way (END_STREAM ↔ FIN), upstream error → RST_STREAM
 * CONNECT_ERROR, client reset → upstream destroyed, optional idle timeout, byte counts.
 *
 * A gateway holds tens of thousands of these, mostly idle, so the listeners are module-level functions
 * shared by every tunnel (EventEmitter calls them with `this` = the emitter, which carries its tunnel
 * under a symbol) rather than closures allocated per tunnel, and the idle timeout is the upstream
 * socket's own timer, which node refreshes on every read and write in either direction.
 */
import { constants, type Http2Session, type ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { perTunnelBufferLimit } from '../core/tunnel-buffers.js';
import { WriteCoalescer } from '../core/write-coalescing.js';

const { NGHTTP2_CANCEL, NGHTTP2_CONNECT_ERROR, NGHTTP2_NO_ERROR } = constants;

/** Why a tunnel ended, as logged (end_reason on "tunnel closed"). */
export type TunnelEndReason =
  | 'closed'
  | 'client_reset'
  | 'upstream_reset'
  | 'upstream_error'
  | 'idle_timeout'
  | 'revoked'
  | 'expired'
  | 'registry_unavailable'
  | 'draining'
  | 'session_closed';

/** Told once, after both the stream and the socket have closed. */
export interface TunnelOwner {
  tunnelClosed(tunnel: Tunnel): void;
}

/** After an idle close (END_STREAM + FIN), how long the peers get to finish before both are reset. */
const IDLE_CLOSE_GRACE_MS = 5_000;
/** After the stream has closed cleanly, how long the upstream gets to take our last bytes. */
const FLUSH_LINGER_MS = 30_000;
/** Client bytes to destination sockets, written once per event-loop turn (core/write-coalescing.ts). */
const coalescer = new WriteCoalescer();

const TUNNEL = Symbol('agent_gateway.tunnel');
/** The tunnel a stream or socket belongs to, kept on the emitter so listeners can be shared functions. */
type TunnelSlot = { [TUNNEL]?: Tunnel };

// Streams the gateway itself reset: the server's per-connection reset accounting counts only the
// client's resets (rapid-reset protection), never ours.
const resetByGateway = new WeakSet<ServerHttp2Stream>();

/** RST_STREAM sent by the gateway (not the client); see isGatewayReset. */
export function gatewayReset(stream: ServerHttp2Stream, code: number): void {
  resetByGateway.add(stream);
  if (stream.closed || stream.destroyed) return;
  // node's close() first ends our writable side if it is still open, and with nothing queued that end
  // goes out as an empty DATA frame with END_STREAM ahead of the RST_STREAM: the client reads a clean
  // end of the destination's bytes (a FIN that never happened) before the reset (docs/contract.md,
  // "Tunnel end"). A reset needs no orderly end of our side, so that end does nothing here. Only for
  // error codes: after RST_STREAM(non-zero) node destroys the stream itself, not waiting for the end.
  if (code !== NGHTTP2_NO_ERROR && !stream.writableEnded) {
    (stream as unknown as { _final: (cb: () => void) => void })._final = endWithoutEndStream;
  }
  stream.close(code);
}

function endWithoutEndStream(done: () => void): void {
  done();
}

export function isGatewayReset(stream: ServerHttp2Stream): boolean {
  return resetByGateway.has(stream);
}

export class Tunnel {
  bytesClientToDest = 0;
  bytesDestToClient = 0;
  endReason: TunnelEndReason = 'closed';
  endDetail: string | undefined;
  readonly startedAt = Date.now();
  private streamClosed = false;
  private socketClosed = false;
  private idleClosing = false;
  private done = false;
  /** @internal */
  readonly session: Http2Session | undefined;

  constructor(
    readonly stream: ServerHttp2Stream,
    readonly socket: Socket,
    /** No bytes either way for this long ends the tunnel; 0 = never. */
    private readonly idleTimeoutMs: number,
    private readonly owner: TunnelOwner,
  ) {
    this.session = stream.session;
    if (this.session !== undefined) {
      tunnelsOnSession.set(this.session, (tunnelsOnSession.get(this.session) ?? 0) + 1);
    }
    (stream as TunnelSlot)[TUNNEL] = this;
    (socket as TunnelSlot)[TUNNEL] = this;
    stream.on('data', onStreamData);
    stream.on('drain', onStreamDrain);
    stream.on('end', onStreamEnd);
    stream.on('error', onStreamError);
    stream.on('close', onStreamClose);
    socket.on('data', onSocketData);
    socket.on('drain', onSocketDrain);
    socket.on('end', onSocketEnd);
    socket.on('error', onSocketError);
    socket.on('close', onSocketClose);
    if (idleTimeoutMs > 0) {
      socket.setTimeout(idleTimeoutMs);
      socket.on('timeout', onSocketTimeout);
    }
  }

  get closed(): boolean {
    return this.done;
  }

  /** End both sides now with RST_STREAM(code) and a destroyed upstream (revocation, drain deadline). */
  reset(reason: TunnelEndReason, detail: string, code: number = NGHTTP2_CANCEL): void {
    if (this.done) return;
    this.setEnd(reason, detail);
    gatewayReset(this.stream, code);
    this.socket.destroy();
  }

  setEnd(reason: TunnelEndReason, detail?: string): void {
    if (this.endReason === 'closed') {
      this.endReason = reason;
      this.endDetail = detail;
    }
  }

  /** @internal */
  onIdle(): void {
    if (this.streamClosed) {
      // The stream ended cleanly but the destination never took the last bytes or never closed.
      this.socket.destroy();
      return;
    }
    if (this.idleClosing) {
      // The peers had their grace period to close after END_STREAM + FIN.
      this.reset('idle_timeout', this.endDetail ?? 'idle');
      return;
    }
    this.idleClosing = true;
    this.setEnd('idle_timeout', `no bytes either way for ${this.idleTimeoutMs} ms`);
    // Like the destination closing the connection: FIN one way, END_STREAM the other, no reset, so a
    // well-behaved client closes its side; a reset follows only if it does not.
    this.socket.setTimeout(IDLE_CLOSE_GRACE_MS);
    if (!this.stream.destroyed && !this.stream.writableEnded) this.stream.end();
    if (!this.socket.writableEnded) this.socket.end();
  }

  /** @internal */
  onStreamClosed(): void {
    this.streamClosed = true;
    const stream = this.stream;
    const clean = stream.rstCode === NGHTTP2_NO_ERROR && !stream.aborted;
    if (!clean) {
      if (!isGatewayReset(stream)) {
        // stream.session is already cleared by the time a destroyed stream emits 'close'.
        const sessionGone = this.session === undefined || this.session.destroyed;
        this.setEnd(sessionGone ? 'session_closed' : 'client_reset', `RST_STREAM code ${stream.rstCode}`);
      }
      this.socket.destroy();
    } else if (!this.socketClosed) {
      // Both END_STREAMs seen; the upstream may still be taking the client's last bytes and our FIN.
      this.socket.setTimeout(Math.min(FLUSH_LINGER_MS, this.idleTimeoutMs || FLUSH_LINGER_MS));
      if (this.idleTimeoutMs === 0) this.socket.on('timeout', onSocketTimeout);
    }
    this.maybeFinish();
  }

  /** @internal */
  onSocketClosed(): void {
    this.socketClosed = true;
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.done || !this.streamClosed || !this.socketClosed) return;
    this.done = true;
    if (this.session !== undefined) {
      tunnelsOnSession.set(this.session, (tunnelsOnSession.get(this.session) ?? 1) - 1);
    }
    // Late events (a socket error after close) find no tunnel and are ignored. Assigning rather than
    // deleting keeps both objects' hidden classes.
    (this.stream as TunnelSlot)[TUNNEL] = undefined;
    (this.socket as TunnelSlot)[TUNNEL] = undefined;
    this.owner.tunnelClosed(this);
  }
}

function tunnelOf(emitter: unknown): Tunnel | undefined {
  return (emitter as TunnelSlot)[TUNNEL];
}

// ---- client → destination ------------------------------------------------------------------------

function onStreamData(this: ServerHttp2Stream, chunk: Buffer): void {
  const t = tunnelOf(this);
  if (t === undefined) return;
  t.bytesClientToDest += chunk.length;
  const socket = t.socket;
  if (socket.destroyed) return;
  coalescer.corkUntilNextTurn(socket);
  if (!socket.write(chunk)) this.pause();
}

function onSocketDrain(this: Socket): void {
  tunnelOf(this)?.stream.resume();
}

function onStreamEnd(this: ServerHttp2Stream): void {
  // Client END_STREAM: FIN to the destination, which may keep answering (half-close).
  const t = tunnelOf(this);
  if (t !== undefined && !t.socket.destroyed && !t.socket.writableEnded) t.socket.end();
}

// ---- destination → client ------------------------------------------------------------------------

/** Tunnels per client connection: each gets a share of the connection's buffer (core/tunnel-buffers.ts). */
const tunnelsOnSession = new WeakMap<Http2Session, number>();

/** Destination bytes this tunnel may have waiting for the client before it stops reading the destination. */
function downloadLimit(t: Tunnel): number {
  return perTunnelBufferLimit(t.session === undefined ? 1 : (tunnelsOnSession.get(t.session) ?? 1));
}

function onSocketData(this: Socket, chunk: Buffer): void {
  const t = tunnelOf(this);
  if (t === undefined) return;
  t.bytesDestToClient += chunk.length;
  const stream = t.stream;
  if (stream.destroyed) return;
  // write() returning false still arms 'drain', which fires once the buffer is empty and resumes us.
  stream.write(chunk);
  if (stream.writableLength >= downloadLimit(t)) this.pause();
}

function onStreamDrain(this: ServerHttp2Stream): void {
  tunnelOf(this)?.socket.resume();
}

const NOTHING = Buffer.alloc(0);

function onSocketEnd(this: Socket): void {
  // Destination FIN: END_STREAM to the client, whose side stays open until it ends too. But 'end' is
  // not always a FIN: when a reset arrives right behind data, libuv reads the data, sees the hang-up
  // and reports end of stream without ever reading the ECONNRESET. A zero-length write asks the kernel:
  // it succeeds on a half-closed connection and fails with the pending ECONNRESET on a reset one, and
  // that error ends the tunnel with RST_STREAM(CONNECT_ERROR) in onSocketError. Once our own FIN has
  // gone out nothing can be written, and a late reset then still reads as a clean end.
  const t = tunnelOf(this);
  if (t === undefined) return;
  if (this.writableEnded || this.destroyed) {
    endStreamAfterFin(t);
    return;
  }
  this.write(NOTHING, (err) => {
    if (err === undefined || err === null) endStreamAfterFin(t);
  });
}

function endStreamAfterFin(t: Tunnel): void {
  const stream = t.stream;
  if (!t.closed && !stream.destroyed && !stream.closed && !stream.writableEnded) stream.end();
}

// ---- errors and closing --------------------------------------------------------------------------

function onSocketError(this: Socket, err: NodeJS.ErrnoException): void {
  const t = tunnelOf(this);
  if (t === undefined) return;
  const reset = err.code === 'ECONNRESET' || err.code === 'EPIPE';
  t.setEnd(reset ? 'upstream_reset' : 'upstream_error', err.code ?? err.message);
  // RFC 9113 §8.5: a TCP error or reset on the destination side is RST_STREAM(CONNECT_ERROR).
  gatewayReset(t.stream, NGHTTP2_CONNECT_ERROR);
}

function onStreamError(this: ServerHttp2Stream, err: NodeJS.ErrnoException): void {
  // A stream error is always followed by 'close'; the reason is recorded, the cleanup happens there.
  tunnelOf(this)?.setEnd('session_closed', err.code ?? err.message);
}

function onSocketTimeout(this: Socket): void {
  tunnelOf(this)?.onIdle();
}

function onStreamClose(this: ServerHttp2Stream): void {
  tunnelOf(this)?.onStreamClosed();
}

function onSocketClose(this: Socket): void {
  tunnelOf(this)?.onSocketClosed();
}
