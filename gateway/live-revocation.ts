/**
 * Live revocation: open tunnels are re-checked when the registry rows behind them change, on a fixed
 * full re-check interval, and when their grant expires, so revoking a permission, a signer or a scope
 * closes tunnels as well as refusing new CONNECTs (README "Revocation: the guarantee").
 *
 * - Notifications (registry-listener.ts) invalidate the decision caches at once and mark the tunnels
 *   indexed under the touched rows (tunnel-index.ts); a few milliseconds later one batch re-check runs,
 *   and tunnels sharing (identity, key, destination) share one query.
 * - A re-check is the CONNECT decision itself, uncached, on the registry's recheck lane: it never waits
 *   behind CONNECT lookups, however many unauthenticated clients are asking. Still allowed: the tunnel
 *   keeps running under the grant found now, which may be another row. Denied: it ends.
 * - Nothing depends on a notification arriving: every tunnel is re-checked every fullRecheckIntervalMs
 *   whether or not the listener is up (a trigger disabled, a write that fires none, a connection that
 *   died silently), and every recheckIntervalMs while the listener is down. Such a sweep is worked off
 *   in small chunks, and tunnels marked by a change go before the next chunk.
 * - Registry unreachable: the tunnel keeps running and is retried every recheckIntervalMs, because a
 *   database blip must not cut every agent; but once its re-checks have failed for longer than
 *   unavailableGraceMs it ends (registry_unavailable), because authorization that cannot be confirmed
 *   must not last forever. A tunnel past its validUntil always ends (expiry-queue.ts).
 * - Re-checks run one batch at a time; a tunnel marked again while its batch runs is checked again
 *   afterwards, and so is one moved to another row that changed while its query ran, so the final
 *   verdict always comes from a query that started after the last change.
 */
import type pg from 'pg';
import type { AccessRequest } from '../core/policy.js';
import { formatTimestamp, type Micros, nowMicros } from '../core/timestamp.js';
import type { DenyReason, Grant, LiveTunnel, TunnelTracker } from './authorization.js';
import type { RegistryVerdict } from './authorizer.js';
import { BackoffTimeout } from './backoff-timeout.js';
import { ExpiryQueue } from './expiry-queue.js';
import type { GatewayMetrics } from './metrics.js';
import { forEachConcurrently, groupBySubject } from './recheck-groups.js';
import { EVERYTHING, type RegistryChange } from './registry-changes.js';
import { type AuthorizationLogger, errorText, silentLogger } from './registry-errors.js';
import { RegistryListener } from './registry-listener.js';
import { TunnelIndex } from './tunnel-index.js';

/** What live revocation needs from the authorizer (RegistryAuthorizer implements it). */
export type RecheckAuthorizer = {
  /** The uncached decision, asked on the recheck lane. Never rejects. */
  recheck(request: AccessRequest, now: Micros): Promise<RegistryVerdict>;
  onRegistryChange(change: RegistryChange): void;
  setListenerUp(up: boolean): void;
  grantMayBeStale(grant: Grant): boolean;
  adoptGrant(grant: Grant, generation: number): void;
  currentGeneration(): number;
};

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

type Entry = {
  readonly tunnel: LiveTunnel;
  /** The grant this entry is indexed under (kept in step with tunnel.grant). */
  grant: Grant;
  done: boolean;
  /** When a re-check of this tunnel first failed to reach the registry, since its last answer. */
  unavailableSince: Micros | undefined;
};

/** Tunnels per worker in one chunk of a sweep: small, so a targeted re-check waits at most one chunk. */
const SWEEP_CHUNK_PER_WORKER = 8;

export class LiveRevocation implements TunnelTracker {
  private readonly authorizer: RecheckAuthorizer;
  private readonly metrics: GatewayMetrics | undefined;
  private readonly logger: AuthorizationLogger;
  private readonly now: () => Micros;
  private readonly coalesceMs: number;
  private readonly concurrency: number;
  private readonly graceMs: number;
  private readonly graceMicros: Micros;

  private readonly index = new TunnelIndex<Entry>();
  private readonly expiry: ExpiryQueue<Entry>;
  private readonly listener: RegistryListener | undefined;

  /** A re-check of every tunnel, worked off in chunks so targeted re-checks never wait behind it. */
  private sweep: Entry[] = [];
  private readonly pending = new Set<Entry>();
  private readonly retry = new Set<Entry>();
  private running: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  /** Re-checks that could not reach the registry: soon at first, then every recheckIntervalMs. */
  private readonly retryBackoff: BackoffTimeout;
  private pollTimer: NodeJS.Timeout | undefined;
  private fullTimer: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  private closed = false;
  private started = false;

  constructor(private readonly opts: LiveRevocationOptions) {
    this.authorizer = opts.authorizer;
    this.metrics = opts.metrics;
    this.logger = opts.logger ?? silentLogger;
    this.now = opts.now ?? nowMicros;
    this.coalesceMs = opts.coalesceMs ?? 5;
    this.concurrency = Math.max(1, opts.recheckConcurrency ?? 2);
    this.graceMs = opts.unavailableGraceMs ?? 0;
    this.graceMicros = BigInt(this.graceMs) * 1000n;
    // A failed re-check under load is usually a slow query, not an outage: try again soon, so one
    // unlucky query does not hold a revoked tunnel open for a whole interval.
    this.retryBackoff = new BackoffTimeout(() => this.retryNow(), {
      initialDelayMs: Math.min(200, opts.recheckIntervalMs),
      maxDelayMs: opts.recheckIntervalMs,
    });
    this.expiry = new ExpiryQueue<Entry>((due) => void this.recheck(due, 'expiry'), this.now);
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
    const entry: Entry = { tunnel, grant: tunnel.grant, done: false, unavailableSince: undefined };
    if (this.closed) return () => {};
    this.index.add(entry);
    this.expiry.schedule(entry, entry.grant.validUntil);
    // The grant may come from a query that ran before a change we have already processed (the CONNECT
    // was still dialling when the notification arrived): re-check it now rather than never.
    if (this.authorizer.grantMayBeStale(tunnel.grant)) this.mark(entry);
    return () => this.untrack(entry);
  }

  state(): RevocationState {
    const listenerUp = this.listener?.up ?? false;
    return {
      mode: this.closed ? 'closed' : listenerUp ? 'listening' : 'polling',
      listenerUp,
      notifications: this.opts.notifications,
      openTunnels: this.index.size,
      pendingRechecks: this.pending.size + this.retry.size + this.sweep.length,
      lastError: this.lastError ?? this.listener?.lastError,
    };
  }

  /** Re-check every open tunnel now (also what polling and reconnects do). Resolves when done. */
  async recheckAll(): Promise<void> {
    this.startSweep();
    await this.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.flushTimer);
    this.retryBackoff.stop();
    clearInterval(this.pollTimer);
    clearInterval(this.fullTimer);
    this.expiry.close();
    await this.listener?.close();
    await this.running;
  }

  /** Exposed for tests and for callers that learn of a change another way. */
  handleChange(change: RegistryChange): void {
    this.authorizer.onRegistryChange(change);
    if (change.table === '*') {
      this.startSweep();
      this.scheduleFlush();
      return;
    }
    let any = false;
    for (const entry of this.index.affected(change)) {
      this.pending.add(entry);
      any = true;
    }
    if (any) this.scheduleFlush();
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
    if (this.index.size > 0) this.recheckEverything();
  }

  private recheckEverything(): void {
    if (this.index.size === 0 || this.closed) return;
    this.startSweep();
    void this.flush();
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

  private startSweep(): void {
    // A newer snapshot covers everything an unfinished one still held.
    this.sweep = [...this.index.entries()];
    this.retry.clear();
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

  private untrack(entry: Entry): void {
    if (entry.done) return;
    entry.done = true;
    this.index.remove(entry);
    this.pending.delete(entry);
    this.retry.delete(entry);
    this.expiry.compactIfSparse(this.index.size);
  }

  private mark(entry: Entry): void {
    this.pending.add(entry);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushTimer !== undefined || this.closed) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      void this.flush();
    }, this.coalesceMs);
    this.flushTimer.unref();
  }

  private scheduleRetry(): void {
    if (this.retryBackoff.isRunning || this.closed) return;
    this.retryBackoff.runOnce();
  }

  private retryNow(): void {
    for (const entry of this.retry) this.pending.add(entry);
    this.retry.clear();
    void this.flush();
  }

  // ---- re-check ------------------------------------------------------------------------------------

  private flush(): Promise<void> {
    if (this.running === undefined) {
      this.running = this.drain().finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  private async drain(): Promise<void> {
    // Yield once so marks made in the same tick join this batch.
    await Promise.resolve();
    while (!this.closed && (this.pending.size > 0 || this.sweep.length > 0)) {
      let batch: Entry[];
      if (this.pending.size > 0) {
        // Marked by a change: before any further chunk of a sweep, so a revoke is never queued behind
        // a re-check of every tunnel.
        batch = [...this.pending];
        this.pending.clear();
      } else {
        batch = this.sweep.splice(0, SWEEP_CHUNK_PER_WORKER * this.concurrency);
      }
      await this.recheck(batch, 'change');
    }
  }

  /**
   * Re-decide `batch`, one query per distinct (identity, key, destination). In 'expiry' mode the
   * tunnels are at or past validUntil: anything but an allow from the registry ends them.
   */
  private async recheck(batch: readonly Entry[], mode: 'change' | 'expiry'): Promise<void> {
    const work = groupBySubject(batch);
    let unavailable = 0;
    let lastDetail = '';
    const recheckOne = async (group: Entry[]) => {
      const outcome = await this.recheckGroup(group, mode);
      if (outcome !== undefined) {
        unavailable += group.length;
        lastDetail = outcome;
      }
    };
    await forEachConcurrently(work, this.concurrency, recheckOne, () => this.closed);
    if (unavailable === 0 && work.length > 0) this.retryBackoff.reset();
    if (unavailable > 0) {
      this.lastError = lastDetail;
      // One line per batch, not per tunnel: during an outage every poll would otherwise flood the log.
      this.logger.warn(
        {
          tunnels: unavailable,
          mode,
          err: lastDetail,
          retry_in_ms: Math.round(this.retryBackoff.delayMs),
          grace_ms: this.graceMs,
        },
        mode === 'expiry'
          ? 'registry unavailable at grant expiry: tunnels ended'
          : 'tunnel re-check could not reach the registry: tunnels keep running within the grace period and are retried',
      );
    }
  }

  /** Returns the registry error text when the registry could not answer. */
  private async recheckGroup(
    group: readonly Entry[],
    mode: 'change' | 'expiry',
  ): Promise<string | undefined> {
    const g = group[0]!.grant;
    const request: AccessRequest = { identity: g.identity, spkiDer: g.spkiDer, destination: g.destination };
    const generation = this.authorizer.currentGeneration();
    const now = this.now();
    const result = await this.authorizer.recheck(request, now);
    for (const entry of group) {
      if (entry.done) continue;
      if (result.kind === 'allow') {
        this.regrant(entry, result.grant, generation);
      } else if (mode === 'expiry') {
        const why =
          result.kind === 'deny'
            ? `${result.reason}: ${result.detail}`
            : `registry unavailable: ${result.detail}`;
        this.revoke(
          entry,
          'expired',
          `grant valid until ${formatTimestamp(entry.grant.validUntil)} ended (${why})`,
        );
      } else if (result.kind === 'deny') {
        this.revoke(entry, result.reason, result.detail);
      } else {
        this.unconfirmed(entry, now, result.detail);
      }
    }
    return result.kind === 'unavailable' ? result.detail : undefined;
  }

  /** A re-check that could not reach the registry: retry, or end the tunnel once past the grace. */
  private unconfirmed(entry: Entry, now: Micros, detail: string): void {
    entry.unavailableSince ??= now;
    if (this.graceMicros > 0n && now - entry.unavailableSince >= this.graceMicros) {
      this.revoke(
        entry,
        'registry_unavailable',
        `authorization not confirmed for ${this.graceMs} ms (policy.recheck_unavailable_grace_ms): ${detail}`,
      );
      return;
    }
    this.retry.add(entry);
    this.scheduleRetry();
  }

  private regrant(entry: Entry, grant: Grant, generation: number): void {
    this.retry.delete(entry);
    entry.unavailableSince = undefined;
    const previous = entry.grant;
    this.authorizer.adoptGrant(grant, generation);
    entry.tunnel.grant = grant;
    if (
      previous.permissionId !== grant.permissionId ||
      previous.signingKeyId !== grant.signingKeyId ||
      previous.destination !== grant.destination
    ) {
      this.logger.info(
        {
          tunnel_id: entry.tunnel.id,
          permission_id: grant.permissionId,
          previous_permission_id: previous.permissionId,
        },
        'tunnel now authorized by another permission row',
      );
    }
    this.index.remove(entry);
    entry.grant = grant;
    this.index.add(entry);
    if (grant.validUntil !== previous.validUntil) this.expiry.schedule(entry, grant.validUntil);
    // A change to the new row processed while the query ran found the tunnel indexed under the old one.
    if (this.authorizer.grantMayBeStale(grant)) this.mark(entry);
  }

  private revoke(entry: Entry, reason: DenyReason | 'expired', detail: string): void {
    if (entry.done) return;
    const grant = entry.grant;
    this.untrack(entry);
    this.metrics?.revocations.inc({ reason });
    this.logger.debug(
      {
        tunnel_id: entry.tunnel.id,
        permission_id: grant.permissionId,
        signing_key_id: grant.signingKeyId,
        reason,
      },
      'ending tunnel',
    );
    try {
      entry.tunnel.revoke(reason, detail);
    } catch (err) {
      this.logger.error({ tunnel_id: entry.tunnel.id, err: errorText(err) }, 'tunnel revoke() threw');
    }
  }
}
