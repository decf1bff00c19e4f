/**
 * Where a CONNECT lookup is asked (docs/contract.md "Replicas"): a streaming replica when one is usable
 * and has replayed the primary's WAL position read after the last registry change (registry-wal-
 * position.ts), else the primary. The LISTEN connection, re-checks and writes never come here: they are
 * the primary's (registry.ts).
 *
 * Read-your-revocations, per connection: a replica connection's answer is used only when an earlier
 * statement on that same connection had already seen pg_last_wal_replay_lsn() at or past the required
 * position. An answer whose own row reports the position is not enough on its own: the statement's
 * snapshot is taken before its functions run, so replay may pass the position between the two. Each
 * lookup's own replay_lsn moves the connection's mark forward for the next one, so only the first lookup
 * per connection after a change costs a second statement (SELECT pg_last_wal_replay_lsn()).
 *
 * The primary unreachable: only while the change listener is down (while it is up, the primary is
 * answering) and a primary query has just failed to connect. Then no registry write can happen, so a
 * replica answers without a position. The state ends at the first primary query that succeeds: a probe of
 * its WAL position on a backoff, any primary lookup or /readyz ping, or the listener coming back. Without
 * the listener a replica is never used while the primary answers (no position can bound it).
 *
 * A replica must be a standby (pg_is_in_recovery()): checked at start, and again before one that could
 * not be reached then is first used (Registry.checkSchema()).
 */
import type { AccessRequest, Candidate } from '../core/policy.js';
import { fetchReplicaCandidates, type Queryable } from '../core/registry-queries.js';
import type { Micros } from '../core/timestamp.js';
import { BackoffTimeout } from './backoff-timeout.js';
import type { GatewayMetrics } from './metrics.js';
import { type AuthorizationLogger, errorText, RegistryUnavailableError } from './registry-errors.js';
import type { RegistryLane } from './registry-lane.js';
import { PrimaryWalPosition, parseLsn } from './registry-wal-position.js';

export type LookupSource = 'primary' | 'replica' | 'primary_fallback';

/** One replica: its lookup lane, whether it may be asked, and each connection's confirmed position. */
export class Replica {
  private unusableReason: string | undefined;
  /** Not yet seen to be a standby (unreachable at start): the next probation asks that first. */
  private unverified = false;
  private readonly backoff: BackoffTimeout;
  /** Per pg connection (one server each): the replay position an earlier statement saw. */
  private readonly confirmed = new WeakMap<object, bigint>();

  constructor(
    readonly name: string,
    readonly lane: RegistryLane,
    private readonly logger: AuthorizationLogger,
  ) {
    this.backoff = new BackoffTimeout(
      () => {
        // Probation: the next lookup may try it again; a failure there backs off longer.
        if (this.unverified) void this.verify();
        else this.unusableReason = undefined;
      },
      { initialDelayMs: 500, maxDelayMs: 30_000 },
    );
  }

  get usable(): boolean {
    return this.unusableReason === undefined;
  }

  get problem(): string | undefined {
    return this.unusableReason;
  }

  /** pg_is_in_recovery() there: false for a primary or a promoted replica. Throws when it cannot be asked. */
  isStandby(): Promise<boolean> {
    return this.lane.withClient('replica_in_recovery', async (client) => {
      const r = await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r');
      return r.rows[0]?.r === true;
    });
  }

  /** Unreachable at start: kept out until it answers, and then used only if it is a standby. */
  unreachableAtStart(err: unknown): void {
    this.unverified = true;
    this.failed(err);
  }

  private async verify(): Promise<void> {
    let standby: boolean;
    try {
      standby = await this.isStandby();
    } catch (err) {
      this.failed(err);
      return;
    }
    this.unverified = false;
    this.backoff.reset();
    if (standby) {
      this.unusableReason = undefined;
      this.logger.info({ replica: this.name }, 'registry replica reachable: lookups may use it');
      return;
    }
    this.unusableReason = 'not a standby (pg_is_in_recovery() is false)';
    this.logger.error(
      { replica: this.name },
      'registry replica is not a standby (a primary or a promoted replica): it is never used until the gateway restarts',
    );
  }

  /** Candidates when this replica has replayed `required` before the lookup's snapshot, else undefined. */
  caughtUpCandidates(
    request: AccessRequest,
    now: Micros,
    required: bigint,
  ): Promise<Candidate[] | undefined> {
    return this.lane.withClient('replica_candidates', async (client) => {
      let mark = this.confirmed.get(client) ?? -1n;
      if (mark < required) {
        const r = await client.query<{ l: string | null }>('SELECT pg_last_wal_replay_lsn()::text AS l');
        mark = this.confirm(client, parseLsn(r.rows[0]?.l) ?? -1n);
        if (mark < required) return undefined;
      }
      return (await this.candidates(client, request, now)).candidates;
    });
  }

  /** Candidates whatever the replay position (the primary is unreachable), with that position. */
  anyCandidates(request: AccessRequest, now: Micros): Promise<{ candidates: Candidate[]; replay: bigint }> {
    return this.lane.withClient('replica_candidates', (client) => this.candidates(client, request, now));
  }

  private async candidates(client: Queryable, request: AccessRequest, now: Micros) {
    const answer = await fetchReplicaCandidates(client, request, now);
    const replay = this.confirm(client, parseLsn(answer.replayLsn) ?? -1n);
    return { candidates: answer.candidates, replay };
  }

  private confirm(client: object, lsn: bigint): bigint {
    const mark = this.confirmed.get(client) ?? -1n;
    const next = lsn > mark ? lsn : mark;
    this.confirmed.set(client, next);
    return next;
  }

  succeeded(): void {
    this.backoff.reset();
  }

  failed(err: unknown): void {
    if (err instanceof RegistryUnavailableError && err.kind === 'busy') return;
    const first = this.unusableReason === undefined;
    this.unusableReason = errorText(err);
    if (first)
      this.logger.warn(
        { replica: this.name, err: this.unusableReason, retry_in_ms: this.backoff.delayMs },
        'registry replica unusable: lookups go to the primary',
      );
    this.backoff.runOnce();
  }

  close(): Promise<void> {
    this.backoff.stop();
    return this.lane.close();
  }
}

/** What the router needs of a replica (Replica; a stand-in in test/unit/registry-replicas.test.ts). */
export type ReplicaSource = Pick<
  Replica,
  'name' | 'usable' | 'caughtUpCandidates' | 'anyCandidates' | 'succeeded' | 'failed' | 'close'
>;

export type LookupRouterOptions = {
  readonly replicas: readonly ReplicaSource[];
  readonly primary: (request: AccessRequest, now: Micros) => Promise<Candidate[]>;
  /** pg_current_wal_insert_lsn()::text on the primary, off the lookup lane. */
  readonly primaryWalLsn: () => Promise<string>;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger: AuthorizationLogger;
  /** First delay before the primary is asked again after it was found unreachable (default 500 ms). */
  readonly probeInitialDelayMs?: number | undefined;
};

export class LookupRouter {
  private readonly position: PrimaryWalPosition;
  private readonly counts: Record<LookupSource, { inc(): void } | undefined>;
  private listening: () => boolean = () => false;
  private next = 0;
  /** Why the primary is unreachable, while the listener is down and a primary lookup failed to connect. */
  private primaryDown: string | undefined;
  private warnedBehind = false;
  /** While the primary is down: when to ask it again (its WAL position, off the lookup path). */
  private readonly probe: BackoffTimeout;

  constructor(private readonly opts: LookupRouterOptions) {
    this.position = new PrimaryWalPosition(opts.primaryWalLsn);
    this.probe = new BackoffTimeout(() => void this.probePrimary(), {
      initialDelayMs: opts.probeInitialDelayMs ?? 500,
      maxDelayMs: 5_000,
    });
    const by = (source: LookupSource) => opts.metrics?.registryLookups.labels({ source });
    this.counts = {
      primary: by('primary'),
      replica: by('replica'),
      primary_fallback: by('primary_fallback'),
    };
    opts.metrics?.degraded.set(0);
  }

  /** Live revocation's listener state (notifications are what keep a replica answer honest). */
  setListening(listening: () => boolean): void {
    this.listening = listening;
  }

  /** A batch of registry changes was announced, or the listener came back (everything changed). */
  changed(): void {
    this.position.changed();
    if (this.primaryDown !== undefined && this.listening()) this.setPrimaryDown(undefined);
  }

  /** A query to the primary succeeded: it is reachable (ends the degraded state). */
  primaryAnswered(): void {
    if (this.primaryDown !== undefined) this.setPrimaryDown(undefined);
  }

  /**
   * A query to the primary failed. True when that makes (or keeps) it unreachable: it could not be
   * reached at all and the listener is down (while the listener is up the primary is answering it).
   */
  primaryFailed(err: unknown): boolean {
    if (!unreachable(err) || this.listening()) return false;
    if (this.primaryDown === undefined) this.setPrimaryDown(errorText(err));
    return true;
  }

  /** The primary's position now (at start, so the first replica lookup need not wait for it). */
  async warm(): Promise<void> {
    if (this.opts.replicas.length > 0) await this.position.required().catch(() => {});
  }

  /** Why /readyz is degraded, or undefined. */
  get degraded(): string | undefined {
    return this.primaryDown === undefined ? undefined : `registry primary unreachable: ${this.primaryDown}`;
  }

  async activeCandidates(request: AccessRequest, now: Micros): Promise<Candidate[]> {
    if (this.opts.replicas.length === 0) return this.fromPrimary('primary', request, now);
    if (!this.listening()) return this.listenerDown(request, now);
    const replica = this.pick();
    if (replica === undefined) return this.fromPrimary('primary', request, now);
    let required: bigint;
    try {
      required = await this.position.required();
    } catch {
      // The primary's position cannot be read: ask it the lookup itself, whose failure is then the answer.
      return this.fromPrimary('primary', request, now);
    }
    try {
      const candidates = await replica.caughtUpCandidates(request, now, required);
      replica.succeeded();
      if (candidates !== undefined) {
        this.counts.replica?.inc();
        return candidates;
      }
    } catch (err) {
      replica.failed(err);
    }
    return this.fromPrimary('primary_fallback', request, now);
  }

  /**
   * No notifications: a replica answer cannot be bounded by a position, so the primary answers while it
   * can; when it cannot be reached, no write can happen either and a replica answers.
   */
  private async listenerDown(request: AccessRequest, now: Micros): Promise<Candidate[]> {
    if (this.primaryDown === undefined) {
      try {
        return await this.fromPrimary('primary', request, now);
      } catch (err) {
        if (!this.primaryFailed(err)) throw err;
      }
    }
    let lastError: unknown;
    for (let tries = this.opts.replicas.length; tries > 0; tries--) {
      const replica = this.pick();
      if (replica === undefined) break;
      try {
        const { candidates, replay } = await replica.anyCandidates(request, now);
        replica.succeeded();
        this.noteBehind(replica, replay);
        this.counts.replica?.inc();
        return candidates;
      } catch (err) {
        replica.failed(err);
        lastError = err;
      }
    }
    if (lastError !== undefined) throw lastError;
    return this.fromPrimary('primary', request, now);
  }

  private async fromPrimary(source: LookupSource, request: AccessRequest, now: Micros): Promise<Candidate[]> {
    const candidates = await this.opts.primary(request, now);
    this.counts[source]?.inc();
    this.primaryAnswered();
    return candidates;
  }

  /** Round robin over the usable replicas. */
  private pick(): ReplicaSource | undefined {
    const { replicas } = this.opts;
    for (let i = 0; i < replicas.length; i++) {
      const replica = replicas[(this.next + i) % replicas.length]!;
      if (replica.usable) {
        this.next = (this.next + i + 1) % replicas.length;
        return replica;
      }
    }
    return undefined;
  }

  private setPrimaryDown(reason: string | undefined): void {
    this.primaryDown = reason;
    this.warnedBehind = false;
    this.opts.metrics?.degraded.set(reason === undefined ? 0 : 1);
    if (reason === undefined) this.probe.stop();
    else {
      this.probe.reset();
      this.probe.runOnce();
    }
    if (reason === undefined)
      this.opts.logger.info(
        {},
        'registry primary reachable again: lookups back on the primary and caught-up replicas',
      );
    else
      this.opts.logger.warn(
        { err: reason },
        'registry primary unreachable and the change listener down: lookups answered by replicas (degraded)',
      );
  }

  /** Ask the primary for its WAL position; an answer ends the state, a failure asks again later. */
  private async probePrimary(): Promise<void> {
    if (this.primaryDown === undefined) return;
    try {
      this.position.changed();
      await this.position.required();
      this.primaryAnswered();
    } catch {
      if (this.primaryDown !== undefined) this.probe.runOnce();
    }
  }

  /** A replica answering for a dead primary from before the last change the gateway heard of. */
  private noteBehind(replica: ReplicaSource, replay: bigint): void {
    const last = this.position.last;
    if (this.warnedBehind || last === undefined || replay >= last) return;
    this.warnedBehind = true;
    this.opts.logger.warn(
      { replica: replica.name, replay_lsn_behind_bytes: String(last - replay) },
      'registry replica answering for an unreachable primary has not replayed the last change announced: a revoke committed just before the primary was lost may not be seen until it returns',
    );
  }

  close(): Promise<void> {
    this.probe.stop();
    return Promise.all(this.opts.replicas.map((r) => r.close())).then(() => undefined);
  }
}

/** A primary that cannot be reached at all (as opposed to one that answered with an error or is busy). */
function unreachable(err: unknown): boolean {
  return (
    err instanceof RegistryUnavailableError && (err.kind === 'connect' || err.kind === 'acquire_timeout')
  );
}
