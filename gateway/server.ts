/**
 * The HTTP/2-only mTLS listener: TLS material (tls-material.ts) and its SIGHUP reload, connections
 * (server-connection.ts: identity read once, stream count, idle timer), per-address connection limits,
 * flow-control windows, and drain. Connections that have proven nothing yet are unproven-connections.ts;
 * the header-size and reset limits on streams are stream-limits.ts; everything about a single stream's
 * CONNECT lives in connect-handler.ts.
 */

import { constants as cryptoConstants } from 'node:crypto';
import http2, {
  constants,
  type Http2SecureServer,
  type IncomingHttpHeaders,
  type SecureServerOptions,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { errorText } from '../core/error-text.js';
import { type AddressLimits, addressKey } from './address-limits.js';
import type { GatewayConfig } from './config.js';
import type { ConnectHandler } from './connect-handler.js';
import type { GatewayMetrics } from './metrics.js';
import {
  ADDRESS_SLOT,
  type AddressSlotSocket,
  CONNECTION,
  Connection,
  type ConnectionOwner,
  type ConnectionSlot,
  onIdleTimer,
  onSessionClose,
  onSocketClose,
  onStreamClose,
  peerAddrOf,
} from './server-connection.js';
import { StreamLimits } from './stream-limits.js';
import type { Logger } from './telemetry.js';
import { loadTlsMaterial, type TlsMaterial } from './tls-material.js';
import { UnprovenConnections, unprovenStreams } from './unproven-connections.js';

export { loadTlsMaterial, type TlsMaterial } from './tls-material.js';

const FORCED_CLOSE_WAIT_MS = 2_000;

export type GatewayServerDeps = {
  readonly config: GatewayConfig;
  readonly handler: ConnectHandler;
  readonly metrics: GatewayMetrics;
  readonly logger: Logger;
  /** Per-source-address limits, shared with the connect handler's lookup budget. */
  readonly addressLimits: AddressLimits;
  /** Share of limits.max_connections this process enforces (the limit is split across workers). */
  readonly maxConnections?: number;
};

export class GatewayServer implements ConnectionOwner {
  private readonly server: Http2SecureServer;
  private readonly connections = new Set<Connection>();
  private readonly unproven: UnprovenConnections;
  private readonly streamLimits: StreamLimits;
  private tls: TlsMaterial;
  private draining = false;
  private drained: Promise<void> | undefined;

  constructor(private readonly deps: GatewayServerDeps) {
    const { config } = deps;
    this.unproven = new UnprovenConnections(deps);
    this.streamLimits = new StreamLimits(deps);
    this.tls = loadTlsMaterial(config.server.tlsCertPath, config.server.tlsKeyPath);
    const options: SecureServerOptions = {
      ...this.secureContextOptions(this.tls),
      // h2 only: an http/1.1-only client fails the TLS handshake (no_application_protocol alert).
      allowHTTP1: false,
      ALPNProtocols: ['h2'],
      // Ask for a client certificate but verify no chain (docs/contract.md "Identity"): the handshake proves
      // possession of the key, and the registry names that exact key. No certificate → every CONNECT is
      // denied.
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: config.server.handshakeTimeoutMs,
      maxSessionMemory: config.http2.maxSessionMemoryMb,
      settings: {
        // Every connection starts unproven (connectionProven raises it).
        maxConcurrentStreams: unprovenStreams(config),
        initialWindowSize: config.http2.streamWindowBytes,
        maxHeaderListSize: config.http2.maxHeaderListBytes,
        maxFrameSize: config.http2.maxFrameSize,
        enablePush: false,
      },
    };
    this.server = http2.createSecureServer(options);
    this.server.maxConnections = deps.maxConnections ?? config.limits.maxConnections;
    this.server.on('connection', this.onConnection);
    this.server.on('session', this.onSession);
    this.server.on('stream', this.onStream);
    this.server.on('unknownProtocol', destroySocket);
    this.server.on('tlsClientError', this.onTlsClientError);
    this.server.on('drop', this.onDrop);
  }

  get isDraining(): boolean {
    return this.draining;
  }

  get openConnections(): number {
    return this.connections.size;
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.deps.config.server.listenAddr;
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host, port }, () => {
        this.server.removeListener('error', onError);
        this.server.on('error', (err) => this.deps.logger.error({ err }, 'server error'));
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  /**
   * Re-read the certificate and key (SIGHUP). New handshakes use them; open connections keep theirs.
   * A certificate that does not parse or does not match its key is refused and the old one kept.
   */
  reloadTls(): boolean {
    const { tlsCertPath, tlsKeyPath } = this.deps.config.server;
    let next: TlsMaterial;
    try {
      next = loadTlsMaterial(tlsCertPath, tlsKeyPath);
      this.server.setSecureContext(this.secureContextOptions(next));
    } catch (err) {
      this.deps.logger.error(
        {
          err: errorText(err),
          tls_cert_path: tlsCertPath,
          kept_fingerprint256: this.tls.fingerprint256,
        },
        'TLS reload failed; keeping the previous certificate',
      );
      return false;
    }
    this.tls = next;
    this.deps.logger.info(
      { subject: next.subject, not_after: next.notAfter, fingerprint256: next.fingerprint256 },
      'TLS certificate reloaded',
    );
    return true;
  }

  get certificate(): Pick<TlsMaterial, 'subject' | 'notAfter' | 'fingerprint256'> {
    return this.tls;
  }

  /**
   * Stop accepting, GOAWAY every connection, let open tunnels run for up to `timeoutMs`, then reset what
   * is left. Resolves when every connection is closed. Idempotent.
   */
  drain(timeoutMs: number): Promise<void> {
    if (this.drained !== undefined) return this.drained;
    this.draining = true;
    this.drained = this.runDrain(timeoutMs);
    return this.drained;
  }

  /** Reset everything now (second signal during drain). */
  forceClose(): void {
    this.deps.handler.resetAll('draining', 'forced shutdown');
    for (const c of [...this.connections]) c.session.destroy();
  }

  private async runDrain(timeoutMs: number): Promise<void> {
    const { logger, handler } = this.deps;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.connections) this.closeGracefully(c);
    logger.info(
      {
        open_connections: this.connections.size,
        open_tunnels: handler.openTunnels,
        drain_timeout_ms: timeoutMs,
      },
      'draining',
    );
    if ((await settleWithin(closed, timeoutMs)) === 'timeout') {
      logger.warn({ open_tunnels: handler.openTunnels }, 'drain deadline reached; resetting open tunnels');
      this.forceClose();
      // Sessions are gone now; what may remain are sockets still in their TLS handshake, which the
      // handshake timeout ends. Not worth holding the exit for.
      await settleWithin(closed, FORCED_CLOSE_WAIT_MS);
    }
    logger.info('drained');
  }

  private closeGracefully(c: Connection): void {
    if (!c.session.closed && !c.session.destroyed) c.session.close();
  }

  private secureContextOptions(tls: TlsMaterial): SecureServerOptions {
    // No session tickets, and so no resumption (node keeps no server-side session cache): a resumed
    // session carries the client certificate of the handshake it came from, so a ticket copied out of a
    // sidecar would be that agent without its TPM key (docs/contract.md "Identity").
    return {
      cert: tls.cert,
      key: tls.key,
      minVersion: 'TLSv1.2',
      secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
    };
  }

  // ---- listeners (arrow properties: one closure per server, none per connection) -----------------

  private readonly onConnection = (socket: AddressSlotSocket): void => {
    const address = addressKey(socket.remoteAddress);
    if (!this.deps.addressLimits.openConnection(address)) {
      // Before TLS: a refused connection costs no handshake. Debug only: a flood would flood the log.
      this.deps.logger.debug(
        {
          source_peer_addr: peerAddrOf(socket),
          max_connections_per_address: this.deps.config.limits.maxConnectionsPerAddress,
        },
        'connection refused: max_connections_per_address reached',
      );
      socket.destroy();
      return;
    }
    socket[ADDRESS_SLOT] = { owner: this, address };
    // Tunnels carry interactive TLS records; Nagle would hold back their small writes.
    socket.setNoDelay(true);
    this.deps.metrics.connectionsTotal.inc();
    this.deps.metrics.connectionsOpen.inc();
    socket.once('close', onSocketClose);
  };

  /** @internal */
  socketClosed(address: string): void {
    this.deps.addressLimits.closeConnection(address);
    this.deps.metrics.connectionsOpen.dec();
  }

  private readonly onDrop = (): void => {
    this.deps.logger.warn(
      { max_connections: this.server.maxConnections },
      'connection refused: max_connections reached',
    );
  };

  private readonly onTlsClientError = (err: NodeJS.ErrnoException, socket: TLSSocket): void => {
    this.deps.logger.debug(
      { err: err.code ?? err.message, source_peer_addr: peerAddrOf(socket) },
      'TLS handshake failed',
    );
  };

  private readonly onSession = (session: ServerHttp2Session): void => {
    const { config } = this.deps;
    const address = addressKey(session.socket.remoteAddress);
    const c = new Connection(this, session, peerAddrOf(session.socket), address, config.policy.clientExtOid);
    (session as ConnectionSlot)[CONNECTION] = c;
    this.connections.add(c);
    session.on('error', this.onSessionError);
    session.once('close', onSessionClose);
    if (!this.unproven.admit(c)) return;
    // Both windows, or the 64 KiB default of the other caps throughput.
    session.setLocalWindowSize(config.http2.connectionWindowBytes);
    if (config.server.sessionIdleTimeoutMs > 0) {
      c.idleTimer = setTimeout(onIdleTimer, config.server.sessionIdleTimeoutMs, c);
      c.idleTimer.unref();
    }
    if (this.draining) this.closeGracefully(c);
  };

  private readonly onSessionError = (err: NodeJS.ErrnoException): void => {
    this.deps.logger.debug({ err: err.code ?? err.message }, 'HTTP/2 session error');
  };

  private readonly onStream = (
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    _flags?: number,
    rawHeaders?: string[],
  ): void => {
    const c = (stream.session as (ServerHttp2Session & ConnectionSlot) | undefined)?.[CONNECTION];
    if (c === undefined) {
      stream.close(constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    c.openStreams++;
    (stream as ConnectionSlot)[CONNECTION] = c;
    stream.once('close', onStreamClose);
    if (!this.streamLimits.admitHeaders(c, stream, headers, rawHeaders)) return;
    const origin = c.origin;
    this.deps.handler.handle(stream, headers, origin);
    // No later stream on this connection can succeed: its certificate does not identify anyone.
    if (!origin.identity.ok) this.unproven.close(c, `client certificate: ${origin.identity.reason}`);
  };

  /** @internal */
  connectionClosed(c: Connection): void {
    if (c.idleTimer !== undefined) clearTimeout(c.idleTimer);
    this.unproven.release(c);
    this.connections.delete(c);
  }

  /** @internal The connection's first allowed CONNECT (unproven-connections.ts). */
  connectionProven(c: Connection): void {
    this.unproven.proven(c);
  }

  /** @internal */
  streamClosed(c: Connection, stream: ServerHttp2Stream): void {
    c.openStreams--;
    const session = c.session;
    if (session.destroyed) return;
    if (c.openStreams === 0 && c.idleTimer !== undefined) c.idleTimer.refresh();
    this.streamLimits.streamClosed(c, stream);
  }
}

async function settleWithin(p: Promise<void>, ms: number): Promise<'done' | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  const outcome = await Promise.race([p.then(() => 'done' as const), deadline]);
  clearTimeout(timer);
  return outcome;
}

function destroySocket(socket: Socket): void {
  // No ALPN at all (a client that did not ask for h2): nothing to say to it in HTTP/2.
  socket.destroy();
}
