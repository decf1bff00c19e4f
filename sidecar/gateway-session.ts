/**
 * The sidecar's one HTTP/2 connection to a gateway. Every handshake costs a TPM signature (several
 * milliseconds on swtpm, more on a chip, on the main thread), so all agent CONNECTs share one cached,
 * multiplexed mTLS session, to the first of the configured gateways that works. When a gateway cannot be
 * reached, sends GOAWAY or drops the connection, the next connection goes to the next gateway. A CONNECT
 * is retried once only when the gateway cannot have processed it (RFC 9113 §8.7): a connection that could
 * not be opened or was already gone when the stream was to be sent, a stream reset with REFUSED_STREAM or
 * above GOAWAY's last stream id, or its 503 `draining`. A connection lost while a CONNECT awaited its
 * answer, or any other reset, may have been processed (the gateway may have dialled the destination): the
 * agent gets the failure. Tunnels already open on a draining gateway run on over the old connection until
 * they end (docs/contract.md "Sidecar").
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import { DENY_REASON_HEADER } from '../core/access-request-id.js';
import { errorText } from '../core/error-text.js';
import { formatHostPort, type HostPort } from '../core/host-port.js';
import { type GatewayEndpoint, type Resolve, resolveGateways } from './gateway-endpoints.js';
import type { Logger } from './telemetry.js';
import { isTpmSigningFailure } from './tpm-context.js';

export type GatewaySessionOptions = {
  /** In the order they are tried; a name with several addresses counts as several (gateway-endpoints.ts). */
  readonly gateways: readonly HostPort[];
  /** Name every gateway certificate must carry (and SNI); undefined = each gateway's configured host. */
  readonly servername: string | undefined;
  /** Client key + carrier certificate + gateway CA. */
  readonly secureContext: tls.SecureContext;
  readonly logger: Logger;
  readonly connectTimeoutMs?: number;
  /** Per-stream receive window; the connection window must stay well above it so one tunnel cannot starve the rest. */
  readonly streamWindowBytes?: number;
  readonly connectionWindowBytes?: number;
  readonly maxSessionMemoryMb?: number;
  /** Called when a handshake failed because the TPM could not sign; the process cannot recover from that. */
  readonly onTpmFailure?: (err: Error) => void;
  /** Name resolution (tests); default: the system resolver. */
  readonly resolve?: Resolve;
};

/** The gateway could not be reached, or the connection died before it answered (even after a retry). */
export class GatewayUnreachableError extends Error {
  constructor(options: { cause: unknown }) {
    super(`gateway unreachable: ${errorText(options.cause)}`, options);
    this.name = 'GatewayUnreachableError';
  }
}

/** The authority cannot be sent in an HTTP/2 CONNECT at all (Node refused the header). */
export class InvalidAuthorityError extends Error {
  constructor(authority: string, options: { cause: unknown }) {
    super(`CONNECT authority ${JSON.stringify(authority)} is not a valid HTTP/2 :authority`, options);
    this.name = 'InvalidAuthorityError';
  }
}

export type GatewayResponse = {
  readonly status: number;
  /** The gateway's response headers (a denial's reason and request id are relayed to the agent). */
  readonly headers: http2.IncomingHttpHeaders;
  readonly stream: http2.ClientHttp2Stream;
};

const DEFAULTS = {
  connectTimeoutMs: 10_000,
  streamWindowBytes: 4 * 1024 * 1024,
  connectionWindowBytes: 32 * 1024 * 1024,
  maxSessionMemoryMb: 128,
};

// Synchronous request() failures that mean "this session is finished", not "this request is bad".
const SESSION_GONE = new Set([
  'ERR_HTTP2_GOAWAY_SESSION',
  'ERR_HTTP2_INVALID_SESSION',
  'ERR_HTTP2_OUT_OF_STREAMS',
  'ERR_HTTP2_SESSION_ERROR',
]);

/** A CONNECT stream that ended before an answer; `retryable` when the gateway cannot have processed it. */
class StreamFailedError extends Error {
  constructor(
    readonly retryable: boolean,
    options: { cause: unknown },
  ) {
    super(errorText(options.cause), options);
  }
}

/** The gateway answered that it is shutting down: it did not process the CONNECT, another gateway may. */
function isDrainingAnswer(status: number, headers: http2.IncomingHttpHeaders): boolean {
  return status === 503 && headers[DENY_REASON_HEADER] === 'draining';
}

export class GatewaySession {
  private readonly opts: GatewaySessionOptions & typeof DEFAULTS;
  private current: http2.ClientHttp2Session | undefined;
  private connecting: Promise<http2.ClientHttp2Session> | undefined;
  private readonly retired = new WeakSet<http2.ClientHttp2Session>();
  /** Which endpoint each established connection went to. */
  private readonly endpointOf = new WeakMap<http2.ClientHttp2Session, GatewayEndpoint>();
  /** The last stream id of the GOAWAY each connection received: streams above it were not processed. */
  private readonly goawayLastStream = new WeakMap<http2.ClientHttp2Session, number>();
  private endpoints: GatewayEndpoint[] = [];
  /** The endpoint the next connection goes to; it moves on only when a gateway fails or drains. */
  private next = 0;
  private closed = false;
  /** TLS connections made so far (each one a TPM signature). */
  connectionsEstablished = 0;

  constructor(opts: GatewaySessionOptions) {
    this.opts = { ...DEFAULTS, ...withoutUndefined(opts) } as GatewaySessionOptions & typeof DEFAULTS;
  }

  /**
   * Send CONNECT `authority` and wait for the gateway's response headers. Resolves with any status (the
   * caller relays non-200); rejects with GatewayUnreachableError or InvalidAuthorityError.
   */
  async connect(authority: string, headers: Record<string, string> = {}): Promise<GatewayResponse> {
    let lastError: unknown;
    for (let attempt = 1; attempt <= 2; attempt++) {
      if (this.closed) throw new GatewayUnreachableError({ cause: new Error('sidecar is shutting down') });
      let session: http2.ClientHttp2Session;
      try {
        session = await this.session();
      } catch (err) {
        lastError = err;
        this.opts.logger.warn({ err: errorText(err), attempt }, 'gateway connection failed');
        continue;
      }
      try {
        const response = await this.request(session, authority, headers);
        if (attempt === 2 || !isDrainingAnswer(response.status, response.headers)) return response;
        // Drain began before our GOAWAY arrived: the stream was refused, not processed.
        response.stream.close(http2.constants.NGHTTP2_NO_ERROR);
        this.retire(session);
        lastError = new Error('gateway is draining');
        this.opts.logger.info(
          { gateway: this.endpointOf.get(session)?.label, dest_authority: authority },
          'gateway answered draining; retrying the CONNECT on the next gateway',
        );
      } catch (err) {
        if (!(err instanceof StreamFailedError)) throw err;
        lastError = err.cause;
        // A refused stream on a healthy connection is retried on that connection; a dead one is replaced,
        // by a connection to the next gateway.
        if (!this.usable(session)) this.retire(session);
        this.opts.logger.warn(
          {
            err: errorText(err.cause),
            attempt,
            dest_authority: authority,
            retried: err.retryable && attempt < 2,
          },
          err.retryable
            ? 'CONNECT refused before the gateway processed it'
            : 'CONNECT failed before the gateway answered; not retried (the gateway may have processed it)',
        );
        if (!err.retryable) break;
      }
    }
    throw new GatewayUnreachableError({ cause: lastError });
  }

  /** Stop using the connection: open streams finish, then it closes. */
  async close(): Promise<void> {
    this.closed = true;
    const session = this.current ?? (await this.connecting?.catch(() => undefined));
    this.current = undefined;
    if (session === undefined || session.destroyed) return;
    await new Promise<void>((resolve) => session.close(() => resolve()));
  }

  destroy(): void {
    this.closed = true;
    this.current?.destroy();
    this.current = undefined;
  }

  private usable(session: http2.ClientHttp2Session): boolean {
    return !session.destroyed && !session.closed && !this.retired.has(session);
  }

  private retire(session: http2.ClientHttp2Session): void {
    const first = !this.retired.has(session);
    this.retired.add(session);
    if (this.current === session) this.current = undefined;
    const endpoint = this.endpointOf.get(session);
    // Failed or draining: the next connection goes to the next gateway (once per connection, and only if
    // nothing has moved on already).
    if (first && endpoint !== undefined && this.endpoints[this.next] === endpoint) {
      this.next = (this.next + 1) % this.endpoints.length;
    }
    // Lets the streams it carries finish, then closes, so a replaced connection does not linger idle.
    if (!session.closed && !session.destroyed) session.close();
  }

  private session(): Promise<http2.ClientHttp2Session> {
    if (this.current !== undefined && this.usable(this.current)) return Promise.resolve(this.current);
    // Concurrent CONNECTs that arrive while a handshake is in flight wait for it instead of each paying
    // for their own TPM signature.
    this.connecting ??= this.dial().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  /** A connection to the next gateway that works, trying each at most once. */
  private async dial(): Promise<http2.ClientHttp2Session> {
    if (this.next === 0 || this.endpoints.length === 0) {
      this.endpoints = await resolveGateways(
        this.opts.gateways,
        this.opts.servername,
        (gateway, err) =>
          this.opts.logger.warn({ gateway, err: errorText(err) }, 'gateway name does not resolve'),
        this.opts.resolve,
      );
      this.next = 0;
    }
    let lastError: unknown;
    for (let tried = 0; tried < this.endpoints.length; tried++) {
      if (this.closed) break;
      const endpoint = this.endpoints[this.next] as GatewayEndpoint;
      try {
        return await this.dialOne(endpoint);
      } catch (err) {
        lastError = err;
        // A TPM that cannot sign fails every gateway alike.
        if (isTpmSigningFailure(err as Error)) throw err;
        this.next = (this.next + 1) % this.endpoints.length;
        if (this.endpoints.length > 1) {
          this.opts.logger.warn(
            { gateway: endpoint.label, err: errorText(err), next_gateway: this.endpoints[this.next]?.label },
            'gateway connection failed; trying the next gateway',
          );
        }
      }
    }
    throw lastError ?? new Error('sidecar is shutting down');
  }

  private dialOne(endpoint: GatewayEndpoint): Promise<http2.ClientHttp2Session> {
    const { host, port, servername } = endpoint;
    const { secureContext, logger } = this.opts;
    const started = performance.now();
    return new Promise((resolve, reject) => {
      let settled = false;
      let established = false;
      let socket: tls.TLSSocket | undefined;
      const session = http2.connect(`https://${formatHostPort(host, port)}`, {
        createConnection: () => {
          socket = tls.connect({
            host,
            port,
            ...(servername === undefined ? {} : { servername }),
            secureContext,
            ALPNProtocols: ['h2'],
            rejectUnauthorized: true,
          });
          // Tunnels carry interactive TLS records; Nagle would add latency to every small write.
          socket.setNoDelay(true);
          return socket;
        },
        settings: { initialWindowSize: this.opts.streamWindowBytes, enablePush: false },
        maxSessionMemory: this.opts.maxSessionMemoryMb,
      });
      const timer = setTimeout(() => {
        session.destroy(new Error(`no TLS/HTTP2 connection within ${this.opts.connectTimeoutMs} ms`));
      }, this.opts.connectTimeoutMs);

      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        session.destroy();
        if (isTpmSigningFailure(err)) this.opts.onTpmFailure?.(err);
        reject(err);
      };
      session.on('error', (err) => {
        if (!settled) {
          fail(err);
          return;
        }
        logger.warn({ err: errorText(err) }, 'gateway connection error');
      });
      session.once('close', () => {
        clearTimeout(timer);
        if (!settled) fail(new Error('connection closed during the TLS/HTTP2 handshake'));
        this.retire(session);
        if (established) logger.info({ gateway: endpoint.label }, 'gateway connection closed');
      });
      session.on('goaway', (errorCode, lastStreamId) => {
        this.goawayLastStream.set(session, lastStreamId);
        // Streams the gateway already accepted keep running; new CONNECTs go to a new connection.
        this.retire(session);
        logger.info(
          { gateway: endpoint.label, error_code: errorCode, last_stream_id: lastStreamId },
          'gateway sent GOAWAY',
        );
      });
      session.once('connect', () => {
        if (settled) return;
        settled = true;
        established = true;
        clearTimeout(timer);
        // The stream window (a SETTING) alone is capped by the 64 KiB connection window: raise both.
        session.setLocalWindowSize(this.opts.connectionWindowBytes);
        this.connectionsEstablished += 1;
        this.current = session;
        this.endpointOf.set(session, endpoint);
        logger.info(
          {
            gateway: endpoint.label,
            handshake_ms: Math.round((performance.now() - started) * 10) / 10,
            tls_protocol: socket?.getProtocol(),
            connections_established: this.connectionsEstablished,
          },
          'gateway connection established',
        );
        resolve(session);
      });
    });
  }

  private request(
    session: http2.ClientHttp2Session,
    authority: string,
    headers: Record<string, string>,
  ): Promise<GatewayResponse> {
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(
        { ...headers, ':method': 'CONNECT', ':authority': authority },
        { endStream: false },
      );
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      // Nothing was sent: the connection was already finished.
      if (SESSION_GONE.has(code) || !this.usable(session))
        return Promise.reject(new StreamFailedError(true, { cause: err }));
      return Promise.reject(new InvalidAuthorityError(authority, { cause: err }));
    }
    // Errors after the response belong to the tunnel, which attaches its own listeners; this one only keeps
    // an error in the gap between the two from being an uncaught exception.
    stream.on('error', () => {});
    return new Promise((resolve, reject) => {
      const onResponse = (h: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader) => {
        cleanup();
        resolve({ status: Number(h[':status']), headers: h, stream });
      };
      // RFC 9113 §8.7: only these guarantee the gateway did not process the stream.
      const unprocessed = () =>
        stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM ||
        (stream.id !== undefined && stream.id > (this.goawayLastStream.get(session) ?? Infinity));
      const onError = (err: Error) => {
        cleanup();
        const retryable = unprocessed();
        stream.destroy();
        reject(new StreamFailedError(retryable, { cause: err }));
      };
      const onClose = () => {
        cleanup();
        reject(
          new StreamFailedError(unprocessed(), {
            cause: new Error(`stream closed before a response (RST code ${stream.rstCode})`),
          }),
        );
      };
      const cleanup = () => {
        stream.off('response', onResponse);
        stream.off('error', onError);
        stream.off('close', onClose);
      };
      stream.once('response', onResponse);
      stream.once('error', onError);
      stream.once('close', onClose);
    });
  }
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
