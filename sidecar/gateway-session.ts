/**
 * The sidecar's one HTTP/2 connection to the gateway. Every handshake costs a TPM signature (several
 * milliseconds on swtpm, more on a chip, on the main thread), so all agent CONNECTs share one cached,
 * multiplexed mTLS session; it is replaced when the gateway sends GOAWAY or the connection drops, and a
 * CONNECT that fails before the gateway answered is retried once on a fresh session.
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import { errorText } from '../core/error-text.js';
import { formatHostPort } from '../core/host-port.js';
import type { Logger } from './telemetry.js';
import { isTpmSigningFailure } from './tpm-context.js';

export type GatewaySessionOptions = {
  readonly host: string;
  readonly port: number;
  /** Name the gateway certificate must carry (and SNI); undefined = check `host` itself, no SNI for IPs. */
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

class RetryableError extends Error {
  constructor(options: { cause: unknown }) {
    super(errorText(options.cause), options);
  }
}

export class GatewaySession {
  private readonly opts: GatewaySessionOptions & typeof DEFAULTS;
  private current: http2.ClientHttp2Session | undefined;
  private connecting: Promise<http2.ClientHttp2Session> | undefined;
  private readonly retired = new WeakSet<http2.ClientHttp2Session>();
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
        return await this.request(session, authority, headers);
      } catch (err) {
        if (!(err instanceof RetryableError)) throw err;
        lastError = err.cause;
        // A refused stream on a healthy connection is retried on that connection; a dead one is replaced.
        if (!this.usable(session)) this.retire(session);
        this.opts.logger.warn(
          { err: errorText(err.cause), attempt, dest_authority: authority },
          'CONNECT failed before the gateway answered',
        );
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
    this.retired.add(session);
    if (this.current === session) this.current = undefined;
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

  private dial(): Promise<http2.ClientHttp2Session> {
    const { host, port, servername, secureContext, logger } = this.opts;
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
        if (established) logger.info('gateway connection closed');
      });
      session.on('goaway', (errorCode, lastStreamId) => {
        // Streams the gateway already accepted keep running; new CONNECTs go to a new connection.
        this.retire(session);
        logger.info({ error_code: errorCode, last_stream_id: lastStreamId }, 'gateway sent GOAWAY');
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
        logger.info(
          {
            gateway: `${host}:${port}`,
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
      if (SESSION_GONE.has(code) || !this.usable(session))
        return Promise.reject(new RetryableError({ cause: err }));
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
      const onError = (err: Error) => {
        cleanup();
        stream.destroy();
        reject(new RetryableError({ cause: err }));
      };
      const onClose = () => {
        cleanup();
        reject(
          new RetryableError({
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
