/**
 * One lane of the registry client: its own pg pool, a bounded wait for a connection, and an optional cap
 * on requests in flight. Lanes exist so that one kind of registry work can never starve another: CONNECT
 * lookups from any client who finished a TLS handshake (lookup) must not delay the re-checks that end
 * revoked tunnels (recheck), and neither may wait behind access-request writes (record). Beyond the cap a request fails at once (RegistryUnavailableError 'busy'),
 * so a flood gets fast answers instead of a queue that grows until every wait times out.
 */
import pg from 'pg';
import type { Queryable } from '../core/registry-queries.js';
import type { GatewayMetrics } from './metrics.js';
import { type AuthorizationLogger, errorText, RegistryUnavailableError } from './registry-errors.js';

export type LaneName = 'lookup' | 'recheck' | 'record';

export type RegistryLaneOptions = {
  /** A LaneName, or replica_<n> for the lookup lane of the n-th replica (registry-replicas.ts). */
  readonly name: string;
  readonly clientConfig: pg.ClientConfig;
  readonly maxConnections: number;
  readonly acquireTimeoutMs: number;
  /** Requests waiting for or holding a connection; beyond it, 'busy' at once. Undefined = unbounded. */
  readonly maxInFlight?: number | undefined;
  /** What sets maxInFlight, named in the 'busy' error. */
  readonly maxInFlightSource?: string | undefined;
  /**
   * Keep every connection open once made (warm()): a lane whose work must not wait cannot afford to open
   * a connection when it is needed, which under load takes longer than the acquire timeout.
   */
  readonly keepOpen?: boolean | undefined;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger: AuthorizationLogger;
};

export class RegistryLane {
  private readonly pool: pg.Pool;
  private inFlight = 0;
  /**
   * Waits we gave up on (acquireTimeoutMs) that are still queued in pg-pool until its own
   * connectionTimeoutMillis. They count against the in-flight cap: otherwise every timed-out lookup
   * would make room for a new one while its waiter stays queued, and the queue could outgrow the cap.
   */
  private abandoned = 0;
  private readonly gauge: { set(v: number): void } | undefined;
  private closed = false;

  constructor(private readonly opts: RegistryLaneOptions) {
    this.pool = new pg.Pool({
      ...opts.clientConfig,
      max: opts.maxConnections,
      ...(opts.keepOpen === true
        ? { min: opts.maxConnections, idleTimeoutMillis: 0 }
        : // Registry clients are cheap to keep and expensive to open during a CONNECT burst.
          { idleTimeoutMillis: 60_000 }),
    });
    // An idle client whose backend dies (restart, pg_terminate_backend) emits here; the pool has already
    // dropped it. Without a listener this event would crash the process.
    this.pool.on('error', (err) => {
      opts.metrics?.registryErrors.inc({ kind: 'connect' });
      opts.logger.warn(
        { err: errorText(err), lane: opts.name },
        'registry connection lost (idle client dropped)',
      );
    });
    this.gauge = opts.metrics?.registryInFlight.labels({ lane: opts.name });
    this.gauge?.set(0);
  }

  /**
   * Borrow a client for `fn`, bounded three ways: the in-flight cap, pg's connectionTimeoutMillis for
   * opening a connection, and acquireTimeoutMs for the whole wait. A client that arrives after we gave up
   * is returned untouched; a client whose query failed is destroyed, since after a timeout its protocol
   * state is unknown.
   */
  async withClient<T>(queryName: string, fn: (client: Queryable) => Promise<T>): Promise<T> {
    const { metrics, maxInFlight } = this.opts;
    if (this.closed) throw new RegistryUnavailableError('closed', 'registry is shut down');
    if (maxInFlight !== undefined && this.inFlight + this.abandoned >= maxInFlight) {
      metrics?.registryErrors.inc({ kind: 'busy' });
      throw new RegistryUnavailableError(
        'busy',
        `${this.inFlight + this.abandoned} registry ${this.opts.name}s in flight or still queued (${this.opts.maxInFlightSource ?? 'cap'} ${maxInFlight})`,
      );
    }
    this.inFlight++;
    this.gauge?.set(this.inFlight);
    const timer = metrics?.registryQuerySeconds.startTimer({ query: queryName });
    try {
      const client = await this.acquire();
      // A backend that dies while we hold the client emits 'error' on it; the pool only listens while idle.
      const onError = (err: Error) =>
        this.opts.logger.debug(
          { err: errorText(err), lane: this.opts.name },
          'registry client error while in use',
        );
      client.on('error', onError);
      let failure: Error | undefined;
      try {
        return await fn(client);
      } catch (err) {
        // An error the server answered (it has a SQLSTATE) leaves the connection in a known state: keep
        // it. Anything else (a client-side timeout, a dead socket) does not: destroy it. Otherwise a
        // client that gets a server error on every CONNECT would cost a new connection each time.
        if (!isServerError(err)) failure = err instanceof Error ? err : new Error(String(err));
        throw classifyQueryError(err);
      } finally {
        client.off('error', onError);
        client.release(failure);
      }
    } catch (err) {
      const typed =
        err instanceof RegistryUnavailableError
          ? err
          : new RegistryUnavailableError('query', errorText(err), { cause: err });
      metrics?.registryErrors.inc({ kind: typed.kind });
      throw typed;
    } finally {
      this.inFlight--;
      this.gauge?.set(this.inFlight);
      timer?.();
    }
  }

  private acquire(): Promise<pg.PoolClient> {
    const { acquireTimeoutMs, maxConnections, name } = this.opts;
    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        this.abandoned++;
        // Every connection open and in use for the whole wait: the registry is answering, just not fast
        // enough for the demand. That is capacity ('busy', 503 for a CONNECT), not an outage.
        const saturated = this.pool.totalCount >= maxConnections && this.pool.idleCount === 0;
        reject(
          new RegistryUnavailableError(
            saturated ? 'busy' : 'acquire_timeout',
            `no registry connection free within ${acquireTimeoutMs} ms (${name} lane, ${maxConnections} connections${saturated ? ', all in use' : ''})`,
          ),
        );
      }, acquireTimeoutMs);
      this.pool.connect().then(
        (client) => {
          clearTimeout(timer);
          if (settled) {
            this.abandoned--;
            client.release();
          } else resolve(client);
        },
        (err: unknown) => {
          clearTimeout(timer);
          if (settled) {
            this.abandoned--;
            return;
          }
          settled = true;
          // pg-pool reuses connectionTimeoutMillis for its own wait queue and reports it in these words.
          const kind = /timeout exceeded when trying to connect/i.test(errorText(err))
            ? 'acquire_timeout'
            : 'connect';
          reject(new RegistryUnavailableError(kind, errorText(err), { cause: err }));
        },
      );
    });
  }

  /** Open every connection now (best effort: a failure here is retried lazily on first use). */
  async warm(): Promise<void> {
    const clients = await Promise.allSettled(
      Array.from({ length: this.opts.maxConnections }, () => this.pool.connect()),
    );
    for (const c of clients) if (c.status === 'fulfilled') c.value.release();
  }

  stats(): { total: number; idle: number; waiting: number; inFlight: number; abandoned: number } {
    return {
      total: this.pool.totalCount,
      idle: this.pool.idleCount,
      waiting: this.pool.waitingCount,
      inFlight: this.inFlight,
      abandoned: this.abandoned,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}

function classifyQueryError(err: unknown): RegistryUnavailableError {
  if (err instanceof RegistryUnavailableError) return err;
  const text = errorText(err);
  // 57014 = query_canceled (statement_timeout); the client-side timer says "Query read timeout".
  const code = (err as { code?: unknown } | null)?.code;
  if (code === '57014' || /Query read timeout/i.test(text)) {
    return new RegistryUnavailableError('query_timeout', text, { cause: err });
  }
  if (/Connection terminated|ECONNRESET|ECONNREFUSED|EPIPE|not queryable/i.test(text) || code === '57P01') {
    return new RegistryUnavailableError('connect', text, { cause: err });
  }
  return new RegistryUnavailableError('query', text, { cause: err });
}

function isServerError(err: unknown): boolean {
  return err instanceof pg.DatabaseError;
}
