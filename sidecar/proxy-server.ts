/**
 * The agent-facing side: a plain HTTP/1.1 proxy on loopback that agents reach through
 * HTTPS_PROXY=http://127.0.0.1:3128. Only CONNECT is served; each one becomes a CONNECT stream on the
 * shared gateway connection and, once the gateway answers 200, an opaque byte pipe in both directions
 * with backpressure and half-close. Agents never see a key or a certificate.
 */
import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import { errorText } from '../core/error-text.js';
import { formatHostPort } from '../core/host-port.js';
import { perTunnelBufferLimit } from '../core/tunnel-buffers.js';
import { WriteCoalescer } from '../core/write-coalescing.js';
import {
  clearStaleSocket,
  type ListenAddress,
  listenUnix,
  PROXY_AUTH_REALM,
  proxyAuthorizationValid,
} from './agent-access.js';
import { gatewayDenialResponse, plainResponse, readGatewayDenial } from './agent-answers.js';
import { type GatewaySession, GatewayUnreachableError, InvalidAuthorityError } from './gateway-session.js';
import { type Logger, startConnectTrace, type Tracing } from './telemetry.js';

export type ProxyServerOptions = {
  readonly listen: ListenAddress;
  /** When set, a CONNECT without `Proxy-Authorization: Basic base64(user:token)` gets 407. */
  readonly proxyToken?: string | undefined;
  readonly gateway: GatewaySession;
  readonly tracing: Tracing;
  readonly logger: Logger;
};

// After the agent has gone, how long the gateway may take to finish its half before the stream is reset.
const ORPHAN_STREAM_GRACE_MS = 5_000;
// How long a FIN to the agent waits for a RST_STREAM that may follow the gateway's END_STREAM.
const RST_AFTER_END_GRACE_MS = 25;
// How many bytes may wait for the agent before the gateway side of a tunnel stops being read. The other
// way, every tunnel queues into the one gateway connection, so each gets a share (core/tunnel-buffers.ts).
const FORWARD_BUFFER_LIMIT = 1024 * 1024;
// Gateway bytes to agent sockets, written once per event-loop turn (core/write-coalescing.ts).
const coalescer = new WriteCoalescer();
// A CONNECT authority is `host:port`; anything with whitespace, a path or credentials is not one.
const AUTHORITY = /^(?:\[[0-9a-fA-F:.]+\]|[^\s/?#@[\]:]+)(?::\d{1,5})?$/;

type Tunnel = { readonly socket: Socket; stream: http2.ClientHttp2Stream | undefined };

export class ProxyServer {
  private readonly server: http.Server;
  private readonly tunnels = new Set<Tunnel>();
  private draining = false;

  constructor(private readonly opts: ProxyServerOptions) {
    this.server = http.createServer();
    this.server.on('request', (req, res) => this.refuseMethod(req, res));
    this.server.on('connect', (req, socket, head) => this.onConnect(req, socket as Socket, head));
    this.server.on('upgrade', (_req, socket: Socket) => {
      socket.end(
        plainResponse(405, 'method not allowed: this proxy only serves CONNECT\n', { Allow: 'CONNECT' }),
      );
    });
    this.server.on('clientError', (err, socket) => {
      if (socket.writable) socket.end(plainResponse(400, 'bad request\n'));
      else socket.destroy();
      this.opts.logger.debug({ err: errorText(err) }, 'malformed request from agent');
    });
  }

  get activeTunnels(): number {
    return this.tunnels.size;
  }

  /** Where agents can now connect: `host:port` (port 0 resolved) or `unix:/path`. */
  async listen(): Promise<string> {
    const at = this.opts.listen;
    if (at.kind === 'unix') {
      await clearStaleSocket(at.path);
      await listenUnix(this.server, at.path, at.gid);
      return `unix:${at.path}`;
    }
    const address = await new Promise<AddressInfo>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: at.host, port: at.port, exclusive: true }, () => {
        this.server.off('error', reject);
        resolve(this.server.address() as AddressInfo);
      });
    });
    return formatHostPort(address.address, address.port);
  }

  /**
   * Stop accepting agents, let open tunnels finish until `deadlineMs` has passed, then cut the rest.
   * Resolves with the number of tunnels that had to be cut.
   */
  async drain(deadlineMs: number): Promise<number> {
    this.draining = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + deadlineMs;
    while (this.tunnels.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now()))));
    }
    const cut = this.tunnels.size;
    for (const t of this.tunnels) {
      // A reset tells the agent its transfer was cut rather than complete.
      t.socket.resetAndDestroy();
      t.stream?.close(http2.constants.NGHTTP2_CANCEL);
    }
    this.server.closeAllConnections();
    await closed;
    return cut;
  }

  private refuseMethod(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.opts.logger.info({ method: req.method, url: req.url }, 'refused non-CONNECT request');
    res.writeHead(405, { Allow: 'CONNECT', 'Content-Type': 'text/plain', Connection: 'close' });
    res.end('method not allowed: this proxy only serves CONNECT\n');
  }

  private onConnect(req: http.IncomingMessage, socket: Socket, head: Buffer): void {
    const { logger, gateway, tracing } = this.opts;
    const authority = req.url ?? '';
    socket.setNoDelay(true);
    socket.on('error', () => {});
    // A Unix-socket peer has no address; the socket file's mode already decided who it can be.
    const peer = socket.remoteAddress === undefined ? 'unix' : `${socket.remoteAddress}:${socket.remotePort}`;
    const { proxyToken } = this.opts;
    if (
      proxyToken !== undefined &&
      !proxyAuthorizationValid(req.headers['proxy-authorization'], proxyToken)
    ) {
      // Before anything reaches the gateway: without the credential this is not the agent.
      logger.info(
        { agent_peer_addr: peer, had_credential: 'proxy-authorization' in req.headers },
        'refused CONNECT without the proxy credential',
      );
      socket.end(
        plainResponse(407, 'proxy authentication required\n', {
          'Proxy-Authenticate': `Basic realm="${PROXY_AUTH_REALM}"`,
        }),
      );
      return;
    }
    if (this.draining) {
      socket.end(plainResponse(503, 'sidecar is shutting down\n'));
      return;
    }
    if (!AUTHORITY.test(authority)) {
      logger.info({ dest_authority: authority }, 'refused CONNECT with an invalid authority');
      socket.end(plainResponse(400, 'CONNECT target must be host:port\n'));
      return;
    }

    const tunnel: Tunnel = { socket, stream: undefined };
    this.tunnels.add(tunnel);
    const started = performance.now();
    const trace = startConnectTrace(tracing, authority, req.headers);
    const log = logger.child({ dest_authority: authority, agent_peer_addr: peer, trace_id: trace.traceId });
    let agentGone = false;
    socket.once('close', () => {
      agentGone = true;
      if (tunnel.stream === undefined) this.tunnels.delete(tunnel);
    });

    gateway.connect(authority, trace.headers).then(
      ({ status, headers, stream }) => {
        tunnel.stream = stream;
        const ms = Math.round((performance.now() - started) * 10) / 10;
        if (agentGone) {
          log.info({ status, connect_ms: ms }, 'agent left before the gateway answered');
          abandonStream(stream);
          this.tunnels.delete(tunnel);
          trace.end({ status, error: 'agent left' });
          return;
        }
        if (status !== 200) {
          const denial = readGatewayDenial(headers);
          log.info(
            { status, connect_ms: ms, deny_reason: denial.reason, request_id: denial.requestId },
            'CONNECT denied by gateway',
          );
          socket.end(gatewayDenialResponse(status, authority, denial));
          abandonStream(stream);
          this.tunnels.delete(tunnel);
          trace.end({ status });
          return;
        }
        log.info({ status, connect_ms: ms }, 'tunnel open');
        this.pipeTunnel(tunnel, stream, head, log, trace.end);
      },
      (err: unknown) => {
        this.tunnels.delete(tunnel);
        if (err instanceof InvalidAuthorityError) {
          log.info({ err: err.message }, 'refused CONNECT with an invalid authority');
          socket.end(plainResponse(400, 'CONNECT target must be host:port\n'));
          trace.end({ status: 400 });
          return;
        }
        const message = errorText(err);
        log.warn(
          { err: message },
          err instanceof GatewayUnreachableError ? 'gateway unreachable' : 'CONNECT failed',
        );
        socket.end(plainResponse(502, 'gateway unreachable'));
        trace.end({ status: 502, error: message });
      },
    );
  }

  private pipeTunnel(
    tunnel: Tunnel,
    stream: http2.ClientHttp2Stream,
    head: Buffer,
    log: Logger,
    endTrace: (o: { status?: number; error?: string }) => void,
  ): void {
    const { socket } = tunnel;
    let agentToGateway = head.length;
    let gatewayToAgent = 0;
    let error: string | undefined;

    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length > 0) stream.write(head);
    // Bytes each way with backpressure, but not pipe(): pipe() pauses the source whenever write() returns
    // false, and both high-water marks here are 16 KiB, below one 64 KiB socket read (and one 16 KiB DATA
    // frame fills the agent socket's), so it paused and resumed per chunk. Pausing only past a larger
    // limit still bounds what a slow side makes a tunnel hold; 'drain' (armed by the write() that returned
    // false) resumes the source once that buffer is empty.
    socket.on('data', (chunk: Buffer) => {
      agentToGateway += chunk.length;
      if (stream.destroyed || stream.writableEnded) return;
      stream.write(chunk);
      if (stream.writableLength >= perTunnelBufferLimit(this.tunnels.size)) socket.pause();
    });
    stream.on('drain', () => socket.resume());
    stream.on('data', (chunk: Buffer) => {
      gatewayToAgent += chunk.length;
      if (socket.destroyed || socket.writableEnded) return;
      coalescer.corkUntilNextTurn(socket);
      socket.write(chunk);
      if (socket.writableLength >= FORWARD_BUFFER_LIMIT) stream.pause();
    });
    socket.on('drain', () => stream.resume());
    // As pipe() did: start both flowing even if something paused them before the 200.
    socket.resume();
    stream.resume();
    // The agent's FIN becomes END_STREAM (the gateway half-closes upstream). The gateway's END_STREAM
    // becomes a FIN only once it is clearly not the first half of a reset: a Node gateway's
    // stream.close(CONNECT_ERROR) sends END_STREAM and then RST_STREAM, and a reset must reach the agent
    // as a reset, never as a clean end of a cut transfer.
    let finTimer: NodeJS.Timeout | undefined;
    socket.once('end', () => {
      if (!stream.destroyed && !stream.writableEnded) stream.end();
    });
    stream.once('end', () => {
      if (stream.closed) return;
      finTimer = setTimeout(() => {
        finTimer = undefined;
        if (!socket.destroyed) socket.end();
      }, RST_AFTER_END_GRACE_MS);
    });

    socket.on('error', (err) => {
      error ??= `agent socket: ${errorText(err)}`;
    });
    stream.on('error', (err) => {
      error ??= `gateway stream: ${errorText(err)}`;
    });
    socket.once('close', () => {
      if (!stream.closed) abandonStream(stream);
    });
    stream.once('close', () => {
      clearTimeout(finTimer);
      if (isReset(stream)) {
        error ??= `gateway reset the stream (code ${stream.rstCode})`;
        // The destination reset (or the gateway failed): a reset, not a FIN, so the agent cannot mistake a
        // cut transfer for a complete one.
        if (!socket.destroyed) socket.resetAndDestroy();
      } else if (!socket.destroyed && !socket.writableEnded) {
        socket.end();
      }
      const done = () => {
        this.tunnels.delete(tunnel);
        log.info(
          { bytes_agent_to_gateway: agentToGateway, bytes_gateway_to_agent: gatewayToAgent, error },
          'tunnel closed',
        );
        endTrace({ status: 200, ...(error === undefined ? {} : { error }) });
      };
      if (socket.closed) done();
      else socket.once('close', done);
    });
  }
}

function isReset(stream: http2.ClientHttp2Stream): boolean {
  return stream.rstCode !== undefined && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR;
}

/**
 * Nobody will read this stream any more: say so with END_STREAM rather than RST (resets are rate-limited
 * per connection by the gateway), discard what is still in flight, and reset only if the gateway does not
 * finish its half in time.
 */
function abandonStream(stream: http2.ClientHttp2Stream): void {
  if (stream.closed || stream.destroyed) return;
  if (!stream.writableEnded) stream.end();
  stream.resume();
  const timer = setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), ORPHAN_STREAM_GRACE_MS);
  timer.unref();
  stream.once('close', () => clearTimeout(timer));
}
