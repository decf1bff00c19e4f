/**
 * The gateway's read-only view of the registry: a bounded pg pool, the schema check at startup, the
 * candidate query and a readiness ping. Every failure surfaces as RegistryUnavailableError so callers
 * have exactly one thing to fail closed on; nothing here retries, because the next CONNECT is the retry
 * and a dead connection is dropped from the pool so that retry gets a fresh one.
 */
import pg from 'pg';
import type { AccessRequest, Candidate } from '../core/policy.js';
import { fetchActiveCandidates, fetchSchemaVersion, type Queryable } from '../core/registry-queries.js';
import type { Micros } from '../core/timestamp.js';
import type { GatewayMetrics } from './metrics.js';

/** First schema version with the NOTIFY triggers live revocation listens to (migrations/0003). */
export const NOTIFY_SCHEMA_VERSION = 3;

export type RegistryErrorKind = 'acquire_timeout' | 'connect' | 'query_timeout' | 'query' | 'closed';

export class RegistryUnavailableError extends Error {
  constructor(
    readonly kind: RegistryErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`registry unavailable (${kind}): ${message}`, options);
    this.name = 'RegistryUnavailableError';
  }
}

/** The registry is reachable but not one this build can serve from: startup must stop. */
export class RegistrySchemaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RegistrySchemaError';
  }
}

/** pino-compatible subset, so tests can pass a stub and main.ts its pino logger. */
export type AuthorityLogger = {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
};

export const silentLogger: AuthorityLogger = { info() {}, warn() {}, error() {}, debug() {} };

export type RegistryOptions = {
  readonly databaseUrl: string;
  readonly maxConnections: number;
  readonly connectTimeoutMs: number;
  readonly poolAcquireTimeoutMs: number;
  readonly queryTimeoutMs: number;
  /** Highest schema version this build understands (core/migrate.ts latestKnownVersion()). */
  readonly latestKnownVersion: number;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger?: AuthorityLogger | undefined;
  readonly applicationName?: string | undefined;
};

export type SchemaStatus = {
  readonly version: number;
  /** False below NOTIFY_SCHEMA_VERSION: live revocation must poll. */
  readonly notifications: boolean;
};

export type PingResult =
  | { readonly ok: true; readonly version: number }
  | { readonly ok: false; readonly error: string };

export class Registry {
  private readonly pool: pg.Pool;
  private readonly logger: AuthorityLogger;
  private closed = false;

  constructor(private readonly opts: RegistryOptions) {
    this.logger = opts.logger ?? silentLogger;
    this.pool = new pg.Pool({
      ...this.clientConfig(opts.applicationName ?? 'agent_gateway'),
      max: opts.maxConnections,
      // Registry clients are cheap to keep and expensive to open during a CONNECT burst.
      idleTimeoutMillis: 60_000,
    });
    // An idle client whose backend dies (restart, pg_terminate_backend) emits here; the pool has already
    // dropped it. Without a listener this event would crash the process.
    this.pool.on('error', (err) => {
      this.opts.metrics?.registryErrors.inc({ kind: 'connect' });
      this.logger.warn({ err: errorText(err) }, 'registry connection lost (idle client dropped)');
    });
  }

  /**
   * Connection settings shared by the pool and the dedicated LISTEN client. statement_timeout makes the
   * server abandon a slow query; query_timeout makes the client stop waiting even when the server or the
   * network never answers. The server side is a little longer so a healthy-but-slow query is reported
   * by the client timer with a clear kind, not as a server cancellation.
   */
  clientConfig(applicationName: string): pg.ClientConfig {
    return {
      connectionString: this.opts.databaseUrl,
      connectionTimeoutMillis: this.opts.connectTimeoutMs,
      query_timeout: this.opts.queryTimeoutMs,
      statement_timeout: this.opts.queryTimeoutMs + 100,
      application_name: applicationName,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    };
  }

  get databaseUrl(): string {
    return this.opts.databaseUrl;
  }

  /**
   * Borrow a client for `fn`, bounded twice: pg's connectionTimeoutMillis bounds opening a connection,
   * and this wrapper bounds the whole wait for a client (a pool exhausted by slow queries would
   * otherwise queue CONNECTs without limit). A client that arrives after we gave up is returned to the
   * pool untouched. A client whose query failed is destroyed, since after a timeout its protocol state
   * is unknown.
   */
  async withClient<T>(queryName: string, fn: (client: Queryable) => Promise<T>): Promise<T> {
    if (this.closed) throw new RegistryUnavailableError('closed', 'registry is shut down');
    const timer = this.opts.metrics?.registryQuerySeconds.startTimer({ query: queryName });
    try {
      const client = await this.acquire();
      // A backend that dies while we hold the client emits 'error' on it; the pool only listens while idle.
      const onError = (err: Error) =>
        this.logger.debug({ err: errorText(err) }, 'registry client error while in use');
      client.on('error', onError);
      let failure: Error | undefined;
      try {
        return await fn(client);
      } catch (err) {
        failure = err instanceof Error ? err : new Error(String(err));
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
      this.opts.metrics?.registryErrors.inc({ kind: typed.kind });
      throw typed;
    } finally {
      timer?.();
    }
  }

  private acquire(): Promise<pg.PoolClient> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        reject(
          new RegistryUnavailableError(
            'acquire_timeout',
            `no registry connection free within ${this.opts.poolAcquireTimeoutMs} ms (pool max ${this.opts.maxConnections})`,
          ),
        );
      }, this.opts.poolAcquireTimeoutMs);
      this.pool.connect().then(
        (client) => {
          clearTimeout(timer);
          if (settled) client.release();
          else resolve(client);
        },
        (err: unknown) => {
          clearTimeout(timer);
          if (settled) return;
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

  /** Active candidates for one request, newest not_after first (a named, prepared statement). */
  activeCandidates(request: AccessRequest, now: Micros): Promise<Candidate[]> {
    return this.withClient('active_candidates', (c) => fetchActiveCandidates(c, request, now));
  }

  /**
   * Startup gate. Throws RegistrySchemaError (main exits non-zero) for a registry this build must not
   * serve from, RegistryUnavailableError when the database cannot be reached.
   */
  async checkSchema(): Promise<SchemaStatus> {
    const version = await this.withClient('schema_version', (c) => fetchSchemaVersion(c));
    const latest = this.opts.latestKnownVersion;
    if (version === 0) {
      throw new RegistrySchemaError(
        'registry schema missing: table agent_gateway_schema_version not found or empty (run the migrations: agent_gateway_registry migrate)',
      );
    }
    if (version < 1 || version > latest) {
      throw new RegistrySchemaError(
        `registry schema version ${version} is not one this gateway knows (1..${latest}); upgrade the gateway before migrating the registry`,
      );
    }
    const notifications = version >= NOTIFY_SCHEMA_VERSION;
    if (!notifications) {
      this.logger.warn(
        { schema_version: version, required: NOTIFY_SCHEMA_VERSION },
        'registry has no change notifications: live revocation falls back to polling every revocation_recheck_interval_ms',
      );
    }
    return { version, notifications };
  }

  /** For /readyz: a round trip plus a schema version this build still accepts. Never throws. */
  async ping(): Promise<PingResult> {
    try {
      const version = await this.withClient('ping', async (c) => {
        await c.query('SELECT 1');
        return fetchSchemaVersion(c);
      });
      if (version < 1 || version > this.opts.latestKnownVersion) {
        return { ok: false, error: `schema version ${version} outside 1..${this.opts.latestKnownVersion}` };
      }
      return { ok: true, version };
    } catch (err) {
      return { ok: false, error: errorText(err) };
    }
  }

  /** Pool occupancy, for diagnostics. */
  poolStats(): { total: number; idle: number; waiting: number } {
    return { total: this.pool.totalCount, idle: this.pool.idleCount, waiting: this.pool.waitingCount };
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

export function errorText(err: unknown): string {
  if (err instanceof Error) {
    // AggregateError (e.g. ECONNREFUSED on both ::1 and 127.0.0.1) has an empty message.
    if (err.message === '' && err instanceof AggregateError) {
      return err.errors.map((e) => errorText(e)).join('; ') || err.name;
    }
    return err.message || err.name;
  }
  return String(err);
}
