/**
 * Live revocation: open tunnels are re-checked when the registry rows behind them change, and ended
 * when the grant expires, so revoking a permission, a signer or a scope closes tunnels as well as
 * refusing new CONNECTs.
 *
 * - A dedicated connection (never a pool client: LISTEN is per session) listens on the registry change
 *   channel. Each notification invalidates the decision cache at once, marks the tunnels indexed under
 *   the touched rows, and a few milliseconds later one batch re-check runs: a bulk revoke of 1000 rows
 *   is one batch, and tunnels sharing (identity, key, destination) share one query.
 * - A re-check is the CONNECT decision itself (RegistryAuthorizer.evaluate, uncached). Still allowed:
 *   the tunnel keeps running under the grant found now, which may be another row. Denied: revoke().
 * - Re-check failure policy: when the registry cannot answer, the tunnel keeps running and is retried
 *   every recheckIntervalMs. Cutting every tunnel during a database blip would turn a registry hiccup
 *   into an outage, and a revoke committed during the blip is still found by the retry. Expiry is the
 *   exception: a tunnel past its validUntil ends whether or not the registry answers.
 * - Expiry: one timer for the earliest validUntil over all tunnels (a min-heap), never one per tunnel.
 *   At expiry the tunnel is re-checked so a renewed grant keeps it open; otherwise it ends as 'expired'.
 * - Listener down: reconnect with exponential backoff; meanwhile every tunnel is re-checked every
 *   recheckIntervalMs and the decision cache is bypassed. On reconnect, everything is re-checked once,
 *   because notifications sent while down are lost.
 * - Re-checks run one batch at a time; a tunnel marked again while its batch runs is checked again
 *   afterwards, so the final verdict always comes from a query that started after the last change.
 */
import pg from 'pg';
import type { AccessRequest } from '../core/policy.js';
import { REGISTRY_CHANGE_CHANNEL } from '../core/registry-queries.js';
import { formatTimestamp, type Micros, nowMicros } from '../core/timestamp.js';
import type { DenyReason, Grant, LiveTunnel, TunnelTracker } from './authority.js';
import type { Evaluation } from './authorizer.js';
import type { GatewayMetrics } from './metrics.js';
import { type AuthorityLogger, errorText, silentLogger } from './registry.js';
import { parseRegistryChange, type RegistryChange } from './registry-changes.js';

/** What live revocation needs from the authorizer (RegistryAuthorizer implements it). */
export type RecheckAuthority = {
  evaluate(request: AccessRequest, now?: Micros): Promise<Evaluation>;
  onRegistryChange(change: RegistryChange): void;
  setListenerUp(up: boolean): void;
  grantMayBeStale(grant: Grant): boolean;
  adoptGrant(grant: Grant, generation: number): void;
  currentGeneration(): number;
};

export type LiveRevocationOptions = {
  readonly authority: RecheckAuthority;
  /** Connection settings for the LISTEN session (Registry.clientConfig()). */
  readonly clientConfig: pg.ClientConfig;
  /** False when the registry schema predates the NOTIFY triggers: poll only. */
  readonly notifications: boolean;
  readonly recheckIntervalMs: number;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger?: AuthorityLogger | undefined;
  readonly now?: (() => Micros) | undefined;
  /** How long to wait for more notifications before re-checking. */
  readonly coalesceMs?: number | undefined;
  readonly reconnectInitialMs?: number | undefined;
  readonly reconnectMaxMs?: number | undefined;
  /** A query on the LISTEN session this often, so a silently dead connection is noticed. */
  readonly heartbeatIntervalMs?: number | undefined;
  /** Re-check queries in flight at once; the rest of the pool stays free for CONNECTs. */
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
  /** Bumped whenever a newer expiry is scheduled, so stale heap items are skipped. */
  expiryVersion: number;
  done: boolean;
};

type HeapItem = { readonly at: Micros; readonly entry: Entry; readonly version: number };

/** setTimeout's ceiling is ~24.8 days; waking up every so often also absorbs wall-clock jumps. */
const MAX_TIMER_MS = 30_000;

export class LiveRevocation implements TunnelTracker {
  private readonly authority: RecheckAuthority;
  private readonly metrics: GatewayMetrics | undefined;
  private readonly logger: AuthorityLogger;
  private readonly now: () => Micros;
  private readonly coalesceMs: number;
  private readonly reconnectInitialMs: number;
  private readonly reconnectMaxMs: number;
  private readonly heartbeatIntervalMs: number;
  private readonly concurrency: number;

  private readonly entries = new Set<Entry>();
  private readonly byPermission = new Map<string, Set<Entry>>();
  private readonly bySigner = new Map<string, Set<Entry>>();
  private readonly byScope = new Map<string, Set<Entry>>();

  private pendingAll = false;
  private readonly pending = new Set<Entry>();
  private readonly retry = new Set<Entry>();
  private running: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;

  private heap: HeapItem[] = [];
  private expiryTimer: NodeJS.Timeout | undefined;
  private armedAt: Micros | undefined;

  private client: pg.Client | undefined;
  private listenerUp = false;
  private backoffMs: number;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  private closed = false;
  private started = false;

  constructor(private readonly opts: LiveRevocationOptions) {
    this.authority = opts.authority;
    this.metrics = opts.metrics;
    this.logger = opts.logger ?? silentLogger;
    this.now = opts.now ?? nowMicros;
    this.coalesceMs = opts.coalesceMs ?? 5;
    this.reconnectInitialMs = opts.reconnectInitialMs ?? 100;
    this.reconnectMaxMs = opts.reconnectMaxMs ?? 3000;
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 10_000;
    this.concurrency = Math.max(1, opts.recheckConcurrency ?? 2);
    this.backoffMs = this.reconnectInitialMs;
    this.metrics?.registryListenerUp.set(0);
  }

  /**
   * Start listening (or polling, without notifications). Resolves after the first connection attempt,
   * whatever its outcome: a registry that is down at startup is retried in the background.
   */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    if (!this.opts.notifications) {
      this.logger.warn(
        { interval_ms: this.opts.recheckIntervalMs },
        'live revocation is polling: the registry schema has no change notifications',
      );
      this.startPolling();
      return;
    }
    this.startPolling(); // until the listener is up
    await this.connectListener();
  }

  track(tunnel: LiveTunnel): () => void {
    const entry: Entry = { tunnel, grant: tunnel.grant, expiryVersion: 0, done: false };
    if (this.closed) return () => {};
    this.entries.add(entry);
    this.index(entry);
    this.scheduleExpiry(entry);
    // The grant may come from a query that ran before a change we have already processed (the CONNECT
    // was still dialling when the notification arrived): re-check it now rather than never.
    if (this.authority.grantMayBeStale(tunnel.grant)) this.mark(entry);
    return () => this.untrack(entry);
  }

  state(): RevocationState {
    return {
      mode: this.closed ? 'closed' : this.listenerUp ? 'listening' : 'polling',
      listenerUp: this.listenerUp,
      notifications: this.opts.notifications,
      openTunnels: this.entries.size,
      pendingRechecks: this.pendingAll ? this.entries.size : this.pending.size + this.retry.size,
      lastError: this.lastError,
    };
  }

  /** Re-check every open tunnel now (also what polling and reconnects do). Resolves when done. */
  async recheckAll(): Promise<void> {
    this.pendingAll = true;
    await this.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of [
      this.flushTimer,
      this.retryTimer,
      this.pollTimer,
      this.expiryTimer,
      this.reconnectTimer,
    ]) {
      clearTimeout(t);
    }
    clearInterval(this.pollTimer);
    clearInterval(this.heartbeatTimer);
    const client = this.client;
    this.client = undefined;
    this.setUp(false);
    if (client !== undefined) await endQuietly(client);
    await this.running;
  }

  // ---- tunnel index --------------------------------------------------------------------------------

  private index(entry: Entry): void {
    const g = entry.grant;
    addTo(this.byPermission, g.permissionId, entry);
    addTo(this.bySigner, g.signingKeyId, entry);
    addTo(this.byScope, scopeKey(g.signingKeyId, g.destination), entry);
  }

  private unindex(entry: Entry): void {
    const g = entry.grant;
    removeFrom(this.byPermission, g.permissionId, entry);
    removeFrom(this.bySigner, g.signingKeyId, entry);
    removeFrom(this.byScope, scopeKey(g.signingKeyId, g.destination), entry);
  }

  private untrack(entry: Entry): void {
    if (entry.done) return;
    entry.done = true;
    this.entries.delete(entry);
    this.unindex(entry);
    this.pending.delete(entry);
    this.retry.delete(entry);
    if (this.heap.length > 2 * this.entries.size + 1024) this.compactHeap();
  }

  private affected(change: RegistryChange): Iterable<Entry> {
    switch (change.table) {
      case 'permission_registry':
        return change.permissionId === undefined
          ? this.entries
          : (this.byPermission.get(change.permissionId) ?? []);
      case 'principal_signing_keys':
        return change.signingKeyId === undefined
          ? this.entries
          : (this.bySigner.get(change.signingKeyId) ?? []);
      case 'principal_key_permissions':
        if (change.signingKeyId === undefined) return this.entries;
        if (change.destination === undefined) return this.bySigner.get(change.signingKeyId) ?? [];
        return this.byScope.get(scopeKey(change.signingKeyId, change.destination)) ?? [];
      default:
        return this.entries;
    }
  }

  // ---- notifications and batching ------------------------------------------------------------------

  /** Exposed for tests and for callers that learn of a change another way. */
  handleChange(change: RegistryChange): void {
    this.authority.onRegistryChange(change);
    if (change.table === '*') {
      this.pendingAll = true;
      this.scheduleFlush();
      return;
    }
    let any = false;
    for (const entry of this.affected(change)) {
      this.pending.add(entry);
      any = true;
    }
    if (any) this.scheduleFlush();
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
    while (!this.closed && (this.pendingAll || this.pending.size > 0)) {
      let batch: Entry[];
      if (this.pendingAll) {
        this.pendingAll = false;
        this.pending.clear();
        this.retry.clear();
        batch = [...this.entries];
      } else {
        batch = [...this.pending];
        this.pending.clear();
      }
      await this.recheck(batch, 'change');
    }
  }

  // ---- re-check ------------------------------------------------------------------------------------

  /**
   * Re-decide `batch`, one query per distinct (identity, key, destination). In 'expiry' mode the
   * tunnels are at or past validUntil: anything but an allow from the registry ends them.
   */
  private async recheck(batch: readonly Entry[], mode: 'change' | 'expiry'): Promise<void> {
    const groups = new Map<string, Entry[]>();
    for (const entry of batch) {
      if (entry.done) continue;
      const key = requestKey(entry.grant);
      const group = groups.get(key);
      if (group === undefined) groups.set(key, [entry]);
      else group.push(entry);
    }
    const work = [...groups.values()];
    let next = 0;
    let unavailable = 0;
    let lastDetail = '';
    const worker = async () => {
      while (next < work.length && !this.closed) {
        const group = work[next++]!;
        const outcome = await this.recheckGroup(group, mode);
        if (outcome !== undefined) {
          unavailable += group.length;
          lastDetail = outcome;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, work.length) }, worker));
    if (unavailable > 0) {
      this.lastError = lastDetail;
      // One line per batch, not per tunnel: during an outage every poll would otherwise flood the log.
      this.logger.warn(
        { tunnels: unavailable, mode, err: lastDetail, retry_in_ms: this.opts.recheckIntervalMs },
        mode === 'expiry'
          ? 'registry unavailable at grant expiry: tunnels ended'
          : 'tunnel re-check could not reach the registry: tunnels keep running and are retried',
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
    const generation = this.authority.currentGeneration();
    const now = this.now();
    const result = await this.authority.evaluate(request, now);
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
        this.retry.add(entry);
        this.scheduleRetry();
      }
    }
    return result.kind === 'unavailable' ? result.detail : undefined;
  }

  private regrant(entry: Entry, grant: Grant, generation: number): void {
    this.retry.delete(entry);
    const previous = entry.grant;
    this.authority.adoptGrant(grant, generation);
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
    this.unindex(entry);
    entry.grant = grant;
    this.index(entry);
    if (grant.validUntil !== previous.validUntil) this.scheduleExpiry(entry);
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

  private scheduleRetry(): void {
    if (this.retryTimer !== undefined || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      for (const entry of this.retry) this.pending.add(entry);
      this.retry.clear();
      void this.flush();
    }, this.opts.recheckIntervalMs);
    this.retryTimer.unref();
  }

  private startPolling(): void {
    if (this.pollTimer !== undefined || this.closed) return;
    this.pollTimer = setInterval(() => {
      if (this.entries.size === 0) return;
      this.pendingAll = true;
      void this.flush();
    }, this.opts.recheckIntervalMs);
    this.pollTimer.unref();
  }

  private stopPolling(): void {
    clearInterval(this.pollTimer);
    this.pollTimer = undefined;
  }

  // ---- expiry --------------------------------------------------------------------------------------

  private scheduleExpiry(entry: Entry): void {
    entry.expiryVersion++;
    heapPush(this.heap, { at: entry.grant.validUntil, entry, version: entry.expiryVersion });
    this.armExpiry();
  }

  private armExpiry(): void {
    while (this.heap.length > 0 && isStale(this.heap[0]!)) heapPop(this.heap);
    const top = this.heap[0];
    if (top === undefined || this.closed) {
      clearTimeout(this.expiryTimer);
      this.expiryTimer = undefined;
      this.armedAt = undefined;
      return;
    }
    if (this.armedAt !== undefined && this.armedAt <= top.at && this.expiryTimer !== undefined) return;
    clearTimeout(this.expiryTimer);
    this.armedAt = top.at;
    const delayMs = Number((top.at - this.now()) / 1000n) + 1;
    this.expiryTimer = setTimeout(() => this.onExpiryTimer(), Math.min(MAX_TIMER_MS, Math.max(0, delayMs)));
    this.expiryTimer.unref();
  }

  private onExpiryTimer(): void {
    this.expiryTimer = undefined;
    this.armedAt = undefined;
    const now = this.now();
    const due: Entry[] = [];
    while (this.heap.length > 0 && this.heap[0]!.at <= now) {
      const item = heapPop(this.heap)!;
      if (!isStale(item)) due.push(item.entry);
    }
    this.armExpiry();
    if (due.length > 0) {
      // Not serialized behind change batches: an expired tunnel must not wait for a slow batch.
      void this.recheck(due, 'expiry');
    }
  }

  private compactHeap(): void {
    const live = this.heap.filter((item) => !isStale(item));
    this.heap = [];
    for (const item of live) heapPush(this.heap, item);
  }

  // ---- LISTEN session ------------------------------------------------------------------------------

  private async connectListener(): Promise<void> {
    if (this.closed) return;
    const client = new pg.Client(this.opts.clientConfig);
    this.client = client;
    client.on('error', (err) => this.listenerLost(client, err));
    client.on('end', () => this.listenerLost(client, new Error('LISTEN connection ended')));
    client.on('notification', (msg) => {
      if (client !== this.client || msg.channel !== REGISTRY_CHANGE_CHANNEL) return;
      this.handleChange(parseRegistryChange(msg.payload));
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${REGISTRY_CHANGE_CHANNEL}`);
    } catch (err) {
      this.listenerLost(client, err);
      return;
    }
    if (client !== this.client || this.closed) {
      await endQuietly(client);
      return;
    }
    this.backoffMs = this.reconnectInitialMs;
    this.lastError = undefined;
    this.setUp(true);
    this.stopPolling();
    this.heartbeatTimer = setInterval(() => this.heartbeat(client), this.heartbeatIntervalMs);
    this.heartbeatTimer.unref();
    this.logger.info({ channel: REGISTRY_CHANGE_CHANNEL }, 'registry change listener up');
    // Changes made while we were not listening were never announced to us.
    if (this.entries.size > 0) {
      this.pendingAll = true;
      void this.flush();
    }
  }

  private heartbeat(client: pg.Client): void {
    if (client !== this.client) return;
    client.query('SELECT 1').catch((err: unknown) => this.listenerLost(client, err));
  }

  private listenerLost(client: pg.Client, err: unknown): void {
    if (client !== this.client) return;
    this.client = undefined;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    const wasUp = this.listenerUp;
    this.setUp(false);
    this.lastError = errorText(err);
    void endQuietly(client);
    if (this.closed) return;
    this.metrics?.registryErrors.inc({ kind: 'listener' });
    this.logger.warn(
      {
        err: this.lastError,
        was_up: wasUp,
        retry_in_ms: this.backoffMs,
        poll_interval_ms: this.opts.recheckIntervalMs,
      },
      'registry change listener down: re-checking tunnels by polling until it reconnects',
    );
    this.startPolling();
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.reconnectMaxMs, this.backoffMs * 2);
    this.reconnectTimer = setTimeout(
      () => {
        this.reconnectTimer = undefined;
        void this.connectListener();
      },
      // Jitter so a fleet of gateways does not reconnect in lockstep after a database restart.
      delay * (0.8 + Math.random() * 0.4),
    );
    this.reconnectTimer.unref();
  }

  private setUp(up: boolean): void {
    this.listenerUp = up;
    this.metrics?.registryListenerUp.set(up ? 1 : 0);
    this.authority.setListenerUp(up);
  }
}

function isStale(item: HeapItem): boolean {
  return item.entry.done || item.version !== item.entry.expiryVersion;
}

function scopeKey(signingKeyId: string, destination: string): string {
  return JSON.stringify([signingKeyId, destination]);
}

function requestKey(g: Grant): string {
  return JSON.stringify([g.identity, g.spkiDer.toString('base64'), g.destination]);
}

function addTo(map: Map<string, Set<Entry>>, key: string, entry: Entry): void {
  const set = map.get(key);
  if (set === undefined) map.set(key, new Set([entry]));
  else set.add(entry);
}

function removeFrom(map: Map<string, Set<Entry>>, key: string, entry: Entry): void {
  const set = map.get(key);
  if (set === undefined) return;
  set.delete(entry);
  if (set.size === 0) map.delete(key);
}

async function endQuietly(client: pg.Client): Promise<void> {
  client.removeAllListeners('notification');
  client.removeAllListeners('end');
  client.removeAllListeners('error');
  client.on('error', () => {});
  try {
    await client.end();
  } catch {
    // already gone
  }
}

// Binary min-heap on `at`.
function heapPush(heap: HeapItem[], item: HeapItem): void {
  heap.push(item);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (heap[parent]!.at <= item.at) break;
    heap[i] = heap[parent]!;
    i = parent;
  }
  heap[i] = item;
}

function heapPop(heap: HeapItem[]): HeapItem | undefined {
  const top = heap[0];
  const last = heap.pop();
  if (top === undefined || last === undefined || heap.length === 0) return top;
  let i = 0;
  for (;;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let m = i;
    let mAt = last.at;
    if (l < heap.length && heap[l]!.at < mAt) {
      m = l;
      mAt = heap[l]!.at;
    }
    if (r < heap.length && heap[r]!.at < mAt) m = r;
    if (m === i) break;
    heap[i] = heap[m]!;
    i = m;
  }
  heap[i] = last;
  return top;
}
