/**
 * Live revocation: open tunnels are re-checked when the registry rows behind them change, on a fixed
 * full re-check interval, and when their grant expires, so revoking a permission, a signer or a scope
 * closes tunnels as well as refusing new CONNECTs (README "Revocation: the guarantee"). This module
 * tracks the tunnels and says when to re-check them; the order of re-checks is recheck-scheduler.ts and
 * what an answer does to a tunnel is recheck-batch.ts.
 *
 * - Notifications (registry-listener.ts) invalidate the decision caches at once and mark the tunnels
 *   indexed under the touched rows (tunnel-index.ts); a few milliseconds later one batch re-check runs,
 *   and tunnels sharing (identity, key, destination) share one query.
 * - A re-check is the CONNECT decision itself, uncached, on the registry's recheck lane: it never waits
 *   behind CONNECT lookups, however many unauthenticated clients are asking.
 * - Nothing depends on a notification arriving: every tunnel is re-checked every fullRecheckIntervalMs
 *   whether or not the listener is up (a trigger disabled, a write that fires none, a connection that
 *   died silently), and every recheckIntervalMs while the listener is down.
 * - Registry unreachable: the tunnel keeps running and is retried every recheckIntervalMs, because a
 *   database blip must not cut every agent; but once its re-checks have failed for longer than
 *   unavailableGraceMs it ends (registry_unavailable), because authorization that cannot be confirmed
 *   must not last forever. A tunnel past its validUntil always ends (expiry-queue.ts).
 * - Re-checks run one batch at a time; a tunnel marked again while its batch runs is checked again
 *   afterwards, and so is one moved to another row that changed while its query ran, so the final
 *   verdict always comes from a query that started after the last change.
 */
import type pg from 'pg';
import { type Micros, nowMicros } from '../core/timestamp.js';
import type { Grant, LiveTunnel, TunnelTracker } from './authorization.js';
import { ExpiryQueue } from './expiry-queue.js';
import type { GatewayMetrics } from './metrics.js';
import { type RecheckAuthorizer, RecheckBatch, type TrackedTunnel } from './recheck-batch.js';
import { RecheckScheduler } from './recheck-scheduler.js';
import { EVERYTHING, type RegistryChange } from './registry-changes.js';
import { type AuthorizationLogger, silentLogger } from './registry-errors.js';
import { RegistryListener } from './registry-listener.js';
import { TunnelIndex } from './tunnel-index.js';

export type { RecheckAuthorizer } from './recheck-batch.js';

export type LiveRevocationOptions = {
  readonly authorizer: RecheckAuthorizer;
  /** Connection settings for the LISTEN session (Registry.clientConfig()). */
  readonly clientConfig: pg.ClientConfig;
  /** False when the registry schema predates the NOTIFY triggers: poll only. */
  readonly notifications: boolean;
  /** Polling while the listener is down, and the retry interval after an unreachable registry. */
  readonly recheckIntervalMs: number;
  /** Every tunnel re-checked this often, listener or not; 0 or unset = off (config.ts has the default). */
  readonly fullRecheckIntervalMs?: number | undefined;
  /** Re-checks failing to reach the registry for this long end the tunnel; 0 or unset = never. */
  readonly unavailableGraceMs?: number | undefined;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger?: AuthorizationLogger | undefined;
  readonly now?: (() => Micros) | undefined;
  /** How long to wait for more notifications before re-checking. */
  readonly coalesceMs?: number | undefined;
  readonly reconnectInitialMs?: number | undefined;
  readonly reconnectMaxMs?: number | undefined;
  readonly heartbeatIntervalMs?: number | undefined;
  readonly heartbeatTimeoutMs?: number | undefined;
  /** Re-check queries in flight at once (the recheck lane's size). */
  readonly recheckConcurrency?: number | undefined;
  /**
   * Told of every change after the authorizer, and of EVERYTHING when the listener comes back up (what
   * changed meanwhile was never announced): held CONNECTs wake on it (access-request-hold.ts).
   */
  readonly onChange?: ((change: RegistryChange) => void) | undefined;
};

export type RevocationState = {
  /** listening: notifications flow; polling: re-checking everything on an interval; closed: stopped. */
  readonly mode: 'listening' | 'polling' | 'closed';
  readonly listenerUp: boolean;
  readonly notifications: boolean;
  readonly openTunnels: number;
  readonly pendingRechecks: number;
  readonly lastError: string | undefined;
};

/** Tunnels per worker in one chunk of a sweep: small, so a targeted re-check waits at most one chunk. */
const SWEEP_CHUNK_PER_WORKER = 8;

export class LiveRevocation implements TunnelTracker {
  private readonly authorizer: RecheckAuthorizer;
  private readonly metrics: GatewayMetrics | undefined;
  private readonly logger: AuthorizationLogger;

  private readonly index = new TunnelIndex<TrackedTunnel>();
  private readonly expiry: ExpiryQueue<TrackedTunnel>;
  private readonly listener: RegistryListener | undefined;
  private readonly scheduler: RecheckScheduler<TrackedTunnel>;
  private readonly batch: RecheckBatch;

  private pollTimer: NodeJS.Timeout | undefined;
  private fullTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private started = false;

  constructor(private readonly opts: LiveRevocationOptions) {
    this.authorizer = opts.authorizer;
    this.metrics = opts.metrics;
    this.logger = opts.logger ?? silentLogger;
    const concurrency = Math.max(1, opts.recheckConcurrency ?? 2);
    this.scheduler = new RecheckScheduler<TrackedTunnel>({
      run: (batch) => this.batch.run(batch, 'change'),
      chunkSize: SWEEP_CHUNK_PER_WORKER * concurrency,
      coalesceMs: opts.coalesceMs ?? 5,
      retryMaxMs: opts.recheckIntervalMs,
    });
    this.batch = new RecheckBatch({
      authorizer: this.authorizer,
      scheduler: this.scheduler,
      concurrency,
      graceMs: opts.unavailableGraceMs ?? 0,
      now: opts.now ?? nowMicros,
      isClosed: () => this.closed,
      reindex: (entry, grant) => this.reindex(entry, grant),
      untrack: (entry) => this.untrack(entry),
      metrics: this.metrics,
      logger: this.logger,
    });
    // Expiry batches run beside the scheduler's one-at-a-time loop, so they may overlap a change batch
    // and each other, and the recheck lane has no in-flight cap. What waits on it stays bounded all the
    // same: each batch asks at most `concurrency` questions at once, and a tunnel is in one expiry batch
    // per deadline (then regranted to a later one or ended), so the questions are at most concurrency
    // plus the open tunnels (limits.max_tunnels per process); the lane's pool bounds what runs.
    this.expiry = new ExpiryQueue<TrackedTunnel>(
      (due) => void this.batch.run(due, 'expiry'),
      opts.now ?? nowMicros,
    );
    this.listener = opts.notifications
      ? new RegistryListener({
          clientConfig: opts.clientConfig,
          onChange: (change) => this.handleChange(change),
          onState: (up) => this.listenerState(up),
          heartbeatIntervalMs: opts.heartbeatIntervalMs,
          heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
          reconnectInitialMs: opts.reconnectInitialMs,
          reconnectMaxMs: opts.reconnectMaxMs,
          metrics: opts.metrics,
          logger: this.logger,
        })
      : undefined;
    if (this.listener === undefined) this.metrics?.registryListenerUp.set(0);
  }

  /**
   * Start listening (or polling, without notifications). Resolves after the first connection attempt,
   * whatever its outcome: a registry that is down at startup is retried in the background.
   */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    const full = this.opts.fullRecheckIntervalMs ?? 0;
    if (full > 0) {
      this.fullTimer = setInterval(() => this.fullRecheck(), full);
      this.fullTimer.unref();
    }
    this.startPolling(); // until the listener is up
    if (this.listener === undefined) {
      this.logger.warn(
        { interval_ms: this.opts.recheckIntervalMs },
        'live revocation is polling: the registry schema has no change notifications',
      );
      return;
    }
    await this.listener.start();
  }

  track(tunnel: LiveTunnel): () => void {
    const entry: TrackedTunnel = {
      tunnel,
      grant: tunnel.grant,
      done: false,
      unavailableSince: undefined,
      cause: undefined,
    };
    if (this.closed) return () => {};
    this.index.add(entry);
    this.expiry.schedule(entry, entry.grant.validUntil);
    // The grant may come from a query that ran before a change we have already processed (the CONNECT
    // was still dialling when the notification arrived): re-check it now rather than never.
    if (this.authorizer.grantMayBeStale(tunnel.grant)) this.scheduler.mark(entry);
    return () => this.untrack(entry);
  }

  state(): RevocationState {
    const listenerUp = this.listener?.up ?? false;
    return {
      mode: this.closed ? 'closed' : listenerUp ? 'listening' : 'polling',
      listenerUp,
      notifications: this.opts.notifications,
      openTunnels: this.index.size,
      pendingRechecks: this.scheduler.queued,
      lastError: this.batch.lastError ?? this.listener?.lastError,
    };
  }

  /** Re-check every open tunnel now (also what polling and reconnects do). Resolves when done. */
  async recheckAll(): Promise<void> {
    this.scheduler.sweep(this.index.entries());
    await this.scheduler.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.scheduler.stop();
    clearInterval(this.pollTimer);
    clearInterval(this.fullTimer);
    this.expiry.close();
    await this.listener?.close();
    await this.scheduler.idle();
  }

  /** Exposed for tests and for callers that learn of a change another way. */
  handleChange(change: RegistryChange): void {
    this.authorizer.onRegistryChange(change);
    this.opts.onChange?.(change);
    if (change.table === '*') {
      this.scheduler.sweep(this.index.entries());
      this.scheduler.flushSoon();
      return;
    }
    // The change is kept on each tunnel it touches so that a tunnel it ends names it (end_detail,
    // receipts: docs/contract.md "Receipts").
    const affected = [...this.index.affected(change)];
    for (const entry of affected) entry.cause = change;
    this.scheduler.markAll(affected);
  }

  // ---- listener state and timers ------------------------------------------------------------------

  private listenerState(up: boolean): void {
    this.authorizer.setListenerUp(up);
    if (!up) {
      this.startPolling();
      return;
    }
    this.stopPolling();
    // Changes made while we were not listening were never announced to us.
    this.opts.onChange?.(EVERYTHING);
    if (this.index.size > 0) this.recheckEverything();
  }

  private recheckEverything(): void {
    if (this.index.size === 0 || this.closed) return;
    this.scheduler.sweep(this.index.entries());
    void this.scheduler.flush();
  }

  /**
   * The full re-check interval: also forget every cached decision, or an agent whose tunnel the sweep
   * just ended (its revoke sent no notification) would reconnect on the cached allow.
   */
  private fullRecheck(): void {
    if (this.closed) return;
    this.authorizer.onRegistryChange(EVERYTHING);
    this.recheckEverything();
  }

  private startPolling(): void {
    if (this.pollTimer !== undefined || this.closed) return;
    this.pollTimer = setInterval(() => this.recheckEverything(), this.opts.recheckIntervalMs);
    this.pollTimer.unref();
  }

  private stopPolling(): void {
    clearInterval(this.pollTimer);
    this.pollTimer = undefined;
  }

  // ---- the tracked set -------------------------------------------------------------------------------

  private reindex(entry: TrackedTunnel, grant: Grant): void {
    const previous = entry.grant;
    this.index.remove(entry);
    entry.grant = grant;
    this.index.add(entry);
    if (grant.validUntil !== previous.validUntil) this.expiry.schedule(entry, grant.validUntil);
  }

  private untrack(entry: TrackedTunnel): void {
    if (entry.done) return;
    entry.done = true;
    this.index.remove(entry);
    this.scheduler.forget(entry);
    this.expiry.compactIfSparse(this.index.size);
  }
}
