/**
 * One batch of re-checks and what each answer does to the tunnels it covers; when batches run is
 * recheck-scheduler.ts. Split from live-revocation.ts so the verdicts sit apart from the tracking.
 *
 * - A re-check is the CONNECT decision itself, uncached, on the registry's recheck lane, asked once per
 *   (identity, key, destination) (recheck-groups.ts).
 * - Still allowed: the tunnel keeps running under the grant found now, which may be another row.
 *   Denied: it ends.
 * - Registry unreachable: the tunnel keeps running and is retried, but once its re-checks have failed
 *   for longer than graceMs it ends (registry_unavailable). At expiry anything but an allow ends it
 *   (README "Revocation: the guarantee").
 */
import type { AccessRequest } from '../core/policy.js';
import { formatTimestamp, type Micros } from '../core/timestamp.js';
import type { DenyReason, Grant, LiveTunnel } from './authorization.js';
import type { RegistryVerdict } from './authorizer.js';
import type { GatewayMetrics } from './metrics.js';
import { forEachConcurrently, groupBySubject } from './recheck-groups.js';
import type { RecheckScheduler } from './recheck-scheduler.js';
import type { RegistryChange } from './registry-changes.js';
import { type AuthorizationLogger, errorText } from './registry-errors.js';

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

/** An open tunnel as live revocation tracks it. */
export type TrackedTunnel = {
  readonly tunnel: LiveTunnel;
  /** The grant this entry is indexed under (kept in step with tunnel.grant). */
  grant: Grant;
  done: boolean;
  /** When a re-check of this tunnel first failed to reach the registry, since its last answer. */
  unavailableSince: Micros | undefined;
  /** The last registry change that marked this tunnel for a re-check (named when it ends the tunnel). */
  cause: RegistryChange | undefined;
};

/** 'change': a registry change, sweep or retry. 'expiry': the tunnels are at or past validUntil. */
export type RecheckMode = 'change' | 'expiry';

export type RecheckBatchDeps = {
  readonly authorizer: RecheckAuthorizer;
  readonly scheduler: RecheckScheduler<TrackedTunnel>;
  /** Questions in flight at once (the recheck lane's size). */
  readonly concurrency: number;
  /** Re-checks failing to reach the registry for this long end the tunnel; 0 = never. */
  readonly graceMs: number;
  readonly now: () => Micros;
  readonly isClosed: () => boolean;
  /** The tunnel now runs under `grant`: index it there (its tunnel.grant is already set). */
  readonly reindex: (entry: TrackedTunnel, grant: Grant) => void;
  /** The tunnel is ending: stop tracking it. */
  readonly untrack: (entry: TrackedTunnel) => void;
  readonly metrics: GatewayMetrics | undefined;
  readonly logger: AuthorizationLogger;
};

export class RecheckBatch {
  private readonly graceMicros: Micros;
  /** The last registry error a re-check met (RevocationState.lastError). */
  lastError: string | undefined;

  constructor(private readonly deps: RecheckBatchDeps) {
    this.graceMicros = BigInt(deps.graceMs) * 1000n;
  }

  /**
   * Re-decide `batch`, one query per distinct (identity, key, destination). In 'expiry' mode the
   * tunnels are at or past validUntil: anything but an allow from the registry ends them.
   */
  async run(batch: readonly TrackedTunnel[], mode: RecheckMode): Promise<void> {
    const { scheduler } = this.deps;
    const work = groupBySubject(batch);
    let unavailable = 0;
    let lastDetail = '';
    const recheckOne = async (group: TrackedTunnel[]) => {
      const outcome = await this.recheckGroup(group, mode);
      if (outcome !== undefined) {
        unavailable += group.length;
        lastDetail = outcome;
      }
    };
    await forEachConcurrently(work, this.deps.concurrency, recheckOne, this.deps.isClosed);
    if (unavailable === 0 && work.length > 0) scheduler.batchAnswered();
    if (unavailable > 0) {
      this.lastError = lastDetail;
      // One line per batch, not per tunnel: during an outage every poll would otherwise flood the log.
      this.deps.logger.warn(
        {
          tunnels: unavailable,
          mode,
          err: lastDetail,
          retry_in_ms: Math.round(scheduler.retryDelayMs),
          grace_ms: this.deps.graceMs,
        },
        mode === 'expiry'
          ? 'registry unavailable at grant expiry: tunnels ended'
          : 'tunnel re-check could not reach the registry: tunnels keep running within the grace period and are retried',
      );
    }
  }

  /** Returns the registry error text when the registry could not answer. */
  private async recheckGroup(
    group: readonly TrackedTunnel[],
    mode: RecheckMode,
  ): Promise<string | undefined> {
    const g = group[0]!.grant;
    const request: AccessRequest = { identity: g.identity, spkiDer: g.spkiDer, destination: g.destination };
    const generation = this.deps.authorizer.currentGeneration();
    const now = this.deps.now();
    const result = await this.deps.authorizer.recheck(request, now);
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
        this.revoke(entry, result.reason, withCause(result.detail, entry.cause));
      } else {
        this.unconfirmed(entry, now, result.detail);
      }
    }
    return result.kind === 'unavailable' ? result.detail : undefined;
  }

  /** A re-check that could not reach the registry: retry, or end the tunnel once past the grace. */
  private unconfirmed(entry: TrackedTunnel, now: Micros, detail: string): void {
    entry.unavailableSince ??= now;
    if (this.graceMicros > 0n && now - entry.unavailableSince >= this.graceMicros) {
      this.revoke(
        entry,
        'registry_unavailable',
        `authorization not confirmed for ${this.deps.graceMs} ms (policy.recheck_unavailable_grace_ms): ${detail}`,
      );
      return;
    }
    this.deps.scheduler.retryLater(entry);
  }

  private regrant(entry: TrackedTunnel, grant: Grant, generation: number): void {
    const { authorizer, scheduler } = this.deps;
    scheduler.answered(entry);
    entry.unavailableSince = undefined;
    entry.cause = undefined;
    const previous = entry.grant;
    authorizer.adoptGrant(grant, generation);
    entry.tunnel.grant = grant;
    if (
      previous.permissionId !== grant.permissionId ||
      previous.signingKeyId !== grant.signingKeyId ||
      previous.destination !== grant.destination
    ) {
      this.deps.logger.info(
        {
          tunnel_id: entry.tunnel.id,
          permission_id: grant.permissionId,
          previous_permission_id: previous.permissionId,
        },
        'tunnel now authorized by another permission row',
      );
    }
    this.deps.reindex(entry, grant);
    // A change to the new row processed while the query ran found the tunnel indexed under the old one.
    if (authorizer.grantMayBeStale(grant)) scheduler.mark(entry);
  }

  private revoke(entry: TrackedTunnel, reason: DenyReason | 'expired', detail: string): void {
    if (entry.done) return;
    const grant = entry.grant;
    this.deps.untrack(entry);
    this.deps.metrics?.revocations.inc({ reason });
    this.deps.logger.debug(
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
      this.deps.logger.error({ tunnel_id: entry.tunnel.id, err: errorText(err) }, 'tunnel revoke() threw');
    }
  }
}

/** A denial's detail with the registry change that led to it: "revoked with the revoking change". */
function withCause(detail: string, cause: RegistryChange | undefined): string {
  if (cause === undefined) return detail;
  const parts = [cause.table, cause.op];
  if (cause.permissionId !== undefined) parts.push(`permission_id=${cause.permissionId}`);
  if (cause.signingKeyId !== undefined) parts.push(`signing_key_id=${cause.signingKeyId}`);
  if (cause.destination !== undefined) parts.push(`destination=${cause.destination}`);
  return `${detail} (registry change: ${parts.filter((p) => p !== undefined).join(' ')})`;
}
