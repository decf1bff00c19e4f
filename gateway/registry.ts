/**
 * The gateway's read-only registry client, in lanes (registry-lane.ts): `lookup` for CONNECT cache
 * misses (capped in flight, a fast 'busy' beyond the cap), `recheck` for live-tunnel re-checks on its
 * own connections, `record` for access-request writes (one connection; the registry's only writes, and
 * only to access_requests: gateway/access-requests.ts), and the dedicated listen connection (registry-listener.ts) built from clientConfig().
 * CONNECT lookups may be answered by streaming replicas instead (registry-replicas.ts); nothing else is.
 * Also the schema check at startup and a readiness ping. Every failure surfaces as
 * RegistryUnavailableError so callers have exactly one thing to fail closed on; nothing here retries,
 * because the next CONNECT is the retry and a dead connection is dropped from the pool.
 */
import type pg from 'pg';
import type { AccessRequest, Candidate } from '../core/policy.js';
import { fetchActiveCandidates, fetchSchemaVersion, type Queryable } from '../core/registry-queries.js';
import type { Micros } from '../core/timestamp.js';
import type { GatewayMetrics } from './metrics.js';
import { type AuthorizationLogger, errorText, silentLogger } from './registry-errors.js';
import { type LaneName, RegistryLane } from './registry-lane.js';
import { LookupRouter, Replica } from './registry-replicas.js';

export {
  type AuthorizationLogger,
  errorText,
  type RegistryErrorKind,
  RegistryUnavailableError,
  silentLogger,
} from './registry-errors.js';
export type { LaneName } from './registry-lane.js';

/** First schema version with the NOTIFY triggers live revocation listens to (migrations/0003). */
export const NOTIFY_SCHEMA_VERSION = 3;

/** The registry is reachable but not one this build can serve from: startup must stop. */
export class RegistrySchemaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RegistrySchemaError';
  }
}

export type RegistryOptions = {
  readonly databaseUrl: string;
  /** Streaming replicas for CONNECT lookups, each with the lookup lane's settings (docs/contract.md "Replicas"). */
  readonly replicaDatabaseUrls?: readonly string[] | undefined;
  /** Connections of the lookup lane. */
  readonly maxConnections: number;
  /** Lookups waiting for or holding a connection; beyond it a lookup fails at once ('busy'). */
  readonly maxLookupsInFlight?: number | undefined;
  /** Connections of the recheck lane (live-tunnel re-checks). */
  readonly recheckConnections?: number | undefined;
  /** Query timeout of the recheck lane (default queryTimeoutMs): a slow answer beats none there. */
  readonly recheckQueryTimeoutMs?: number | undefined;
  readonly connectTimeoutMs: number;
  readonly poolAcquireTimeoutMs: number;
  readonly queryTimeoutMs: number;
  /** Highest schema version this build understands (core/migrate.ts latestKnownVersion()). */
  readonly latestKnownVersion: number;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger?: AuthorizationLogger | undefined;
  readonly applicationName?: string | undefined;
};

export type SchemaStatus = {
  readonly version: number;
  /** False below NOTIFY_SCHEMA_VERSION: live revocation must poll. */
  readonly notifications: boolean;
};

export type PingResult =
  /** degraded: the primary is unreachable and a replica answered (served, but /readyz says why). */
  | { readonly ok: true; readonly version: number; readonly degraded?: string | undefined }
  | { readonly ok: false; readonly error: string };

export class Registry {
  private readonly logger: AuthorizationLogger;
  private readonly lanes: Record<LaneName, RegistryLane>;
  private readonly router: LookupRouter;
  private readonly replicas: Replica[];
  private closed = false;

  constructor(private readonly opts: RegistryOptions) {
    this.logger = opts.logger ?? silentLogger;
    const app = opts.applicationName ?? 'agent_gateway';
    const common = {
      acquireTimeoutMs: opts.poolAcquireTimeoutMs,
      metrics: opts.metrics,
      logger: this.logger,
    };
    this.lanes = {
      lookup: new RegistryLane({
        ...common,
        name: 'lookup',
        clientConfig: this.clientConfig(app),
        maxConnections: opts.maxConnections,
        maxInFlight: opts.maxLookupsInFlight,
        maxInFlightSource: 'policy.max_lookups_in_flight',
      }),
      recheck: new RegistryLane({
        ...common,
        name: 'recheck',
        clientConfig: this.clientConfig(`${app}_recheck`, opts.recheckQueryTimeoutMs),
        maxConnections: opts.recheckConnections ?? 2,
        keepOpen: true,
      }),
      // Nobody waits on a record: one connection, opened on first use, and a flush that finds it taken
      // fails at once rather than queueing (gateway/access-requests.ts flushes one batch at a time).
      record: new RegistryLane({
        ...common,
        name: 'record',
        clientConfig: this.clientConfig(`${app}_record`),
        maxConnections: 1,
        maxInFlight: 1,
        maxInFlightSource: 'one access-request flush at a time',
      }),
    };
    this.replicas = (opts.replicaDatabaseUrls ?? []).map((url, i) => {
      const name = `replica_${i + 1}`;
      const lane = new RegistryLane({
        ...common,
        name,
        clientConfig: { ...this.clientConfig(`${app}_replica`), connectionString: url },
        maxConnections: opts.maxConnections,
        maxInFlight: opts.maxLookupsInFlight,
        maxInFlightSource: 'policy.max_lookups_in_flight',
      });
      return new Replica(name, lane, this.logger);
    });
    this.router = new LookupRouter({
      replicas: this.replicas,
      primary: (request, now) =>
        this.lanes.lookup.withClient('active_candidates', (c) => fetchActiveCandidates(c, request, now)),
      primaryWalLsn: () =>
        this.lanes.recheck.withClient('primary_wal_lsn', async (c) => {
          const r = await c.query<{ l: string }>('SELECT pg_current_wal_insert_lsn()::text AS l');
          return r.rows[0]?.l ?? '';
        }),
      metrics: opts.metrics,
      logger: this.logger,
    });
  }

  /**
   * Live revocation's listener state: replica answers are bounded by positions read after notifications,
   * so they need the listener (registry-replicas.ts).
   */
  setListening(listening: () => boolean): void {
    this.router.setListening(listening);
  }

  /** Called for every registry change notification, and with everything when the listener comes back. */
  registryChanged(): void {
    this.router.changed();
  }

  /**
   * Connection settings shared by the lanes and the dedicated LISTEN client. statement_timeout makes the
   * server abandon a slow query; query_timeout makes the client stop waiting even when the server or the
   * network never answers. The server side is a little longer so a healthy-but-slow query is reported
   * by the client timer with a clear kind, not as a server cancellation.
   */
  clientConfig(applicationName: string, queryTimeoutMs = this.opts.queryTimeoutMs): pg.ClientConfig {
    return {
      connectionString: this.opts.databaseUrl,
      connectionTimeoutMillis: this.opts.connectTimeoutMs,
      query_timeout: queryTimeoutMs,
      statement_timeout: queryTimeoutMs + 100,
      application_name: applicationName,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    };
  }

  get databaseUrl(): string {
    return this.opts.databaseUrl;
  }

  /** Borrow a client of `lane` for `fn` (RegistryLane.withClient). */
  withClient<T>(
    queryName: string,
    fn: (client: Queryable) => Promise<T>,
    lane: LaneName = 'lookup',
  ): Promise<T> {
    return this.lanes[lane].withClient(queryName, fn);
  }

  /**
   * Active candidates for one request, newest not_after first (a named, prepared statement). On the
   * lookup lane a caught-up replica may answer (registry-replicas.ts); every other lane is the primary's.
   */
  activeCandidates(request: AccessRequest, now: Micros, lane: LaneName = 'lookup'): Promise<Candidate[]> {
    if (lane === 'lookup') return this.router.activeCandidates(request, now);
    return this.lanes[lane].withClient('active_candidates', (c) => fetchActiveCandidates(c, request, now));
  }

  /**
   * Startup gate. Throws RegistrySchemaError (main exits non-zero) for a registry this build must not
   * serve from, RegistryUnavailableError when the database cannot be reached.
   */
  async checkSchema(): Promise<SchemaStatus> {
    const version = await this.lanes.lookup.withClient('schema_version', (c) => fetchSchemaVersion(c));
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
    await this.checkReplicas();
    const notifications = version >= NOTIFY_SCHEMA_VERSION;
    if (!notifications) {
      this.logger.warn(
        { schema_version: version, required: NOTIFY_SCHEMA_VERSION },
        'registry has no change notifications: live revocation falls back to polling every revocation_recheck_interval_ms',
      );
    }
    return { version, notifications };
  }

  /**
   * A replica URL must name a standby (docs/contract.md "Replicas"): one that is not would cost every
   * lookup a replica and a primary query. One that cannot be reached now is kept out until it answers.
   */
  private async checkReplicas(): Promise<void> {
    for (const [i, replica] of this.replicas.entries()) {
      let standby: boolean;
      try {
        standby = await replica.isStandby();
      } catch (err) {
        this.logger.warn(
          { replica: replica.name, err: errorText(err) },
          'registry replica unreachable at start: kept out of lookups until it answers and is a standby',
        );
        replica.unreachableAtStart(err);
        continue;
      }
      if (!standby)
        throw new RegistrySchemaError(
          `policy.replica_database_url[${i}] (${replica.name}; replica_database_url_env entries count after replica_database_url's) is not a standby: pg_is_in_recovery() is false there (a primary, or a promoted replica); point it at a streaming replica or remove it`,
        );
    }
  }

  /**
   * For /readyz: a round trip plus a schema version this build still accepts. Never throws. On the
   * recheck lane, so a CONNECT flood that fills the lookup lane does not also fail readiness. Whether it
   * is degraded is the lookup router's state (agent_gateway_degraded), which this ping feeds too.
   */
  async ping(): Promise<PingResult> {
    const primary = await this.pingLane(this.lanes.recheck);
    if (primary.ok) {
      this.router.primaryAnswered();
      return primary;
    }
    if (!this.router.primaryFailed(primary.cause)) return { ok: false, error: primary.error };
    // The primary is unreachable: still ready (agents keep connecting) as long as a replica answers.
    for (const replica of this.replicas) {
      if (!replica.usable) continue;
      const r = await this.pingLane(replica.lane);
      if (r.ok) return { ok: true, version: r.version, degraded: this.router.degraded };
    }
    return { ok: false, error: primary.error };
  }

  private async pingLane(
    lane: RegistryLane,
  ): Promise<{ ok: true; version: number } | { ok: false; error: string; cause: unknown }> {
    try {
      const version = await lane.withClient('ping', async (c) => {
        await c.query('SELECT 1');
        return fetchSchemaVersion(c);
      });
      if (version < 1 || version > this.opts.latestKnownVersion) {
        const error = `schema version ${version} outside 1..${this.opts.latestKnownVersion}`;
        return { ok: false, error, cause: new Error(error) };
      }
      return { ok: true, version };
    } catch (err) {
      return { ok: false, error: errorText(err), cause: err };
    }
  }

  /**
   * Open the recheck lane's connections now, so the first re-check under load does not wait for one; and
   * with replicas, read the primary's WAL position so the first lookup need not.
   */
  async warm(): Promise<void> {
    await this.lanes.recheck.warm();
    await this.router.warm();
  }

  /** Lookup-lane occupancy, for diagnostics. */
  poolStats(): { total: number; idle: number; waiting: number } {
    const { total, idle, waiting } = this.lanes.lookup.stats();
    return { total, idle, waiting };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...Object.values(this.lanes).map((lane) => lane.close()), this.router.close()]);
  }
}
