/**
 * Hold mode (docs/contract.md "Access requests", hold): a CONNECT denied `no_permission` for a key that
 * already holds a grant somewhere waits up to requests.hold_ms for a principal to approve it. Every
 * registry change notification wakes the held CONNECTs (a notification never names the subject, so all
 * of them), and each runs the full, uncached decision again; the first allow continues the CONNECT on
 * the same stream. Nothing else ends a hold early but the client going away and drain.
 *
 * Why only keys with a grant: anyone who finishes a TLS handshake can mint a key, and a held stream is
 * memory and a slot for hold_ms. A key some principal has already signed for is an agent someone runs.
 * The bounds (max_held per process, max_held_per_identity per proven key) are checked before the
 * registry is asked, so a flood of denials costs no more queries once they are reached.
 */
import type { ServerHttp2Stream } from 'node:http2';
import type { Destination } from '../core/destination.js';
import type { PeerIdentity } from '../core/identity-extension.js';
import type { AccessRequest } from '../core/policy.js';
import type { Queryable } from '../core/registry-queries.js';
import { formatTimestamp, type Micros, nowMicros } from '../core/timestamp.js';
import type { Grant } from './authorization.js';
import type { RegistryVerdict } from './authorizer.js';
import type { GatewayMetrics } from './metrics.js';
import type { RegistryChange } from './registry-changes.js';
import { type AuthorizationLogger, errorText } from './registry-errors.js';
import { boundedLogValue } from './telemetry.js';

/** Re-decisions running at once after a wake: the lookup lane is shared with every CONNECT. */
const WAKE_CONCURRENCY = 2;
/** A re-decision the registry could not answer (busy, down) is retried this much later, within the hold. */
const RETRY_MS = 200;
/** Destinations of a key's active rows tried when asking whether the key has a grant at all. */
const MAX_GRANT_PROBES = 4;

/** Distinct destinations of a key's rows in force now: $1 identity, $2 SPKI, $3 now (text). */
const GRANTED_DESTINATIONS_SQL = `
SELECT DISTINCT p.destination
FROM permission_registry p
JOIN principal_signing_keys k ON k.key_id = p.signing_key_id
WHERE p.subject_identity = $1 AND p.subject_public_key_spki_der = $2
  AND p.revoked_at IS NULL AND p.not_before <= $3::timestamptz AND p.not_after > $3::timestamptz
  AND k.revoked_at IS NULL AND k.not_before <= $3::timestamptz AND k.not_after > $3::timestamptz
LIMIT ${MAX_GRANT_PROBES}`;

/** The decision path as the hold re-runs it (RegistryAuthorizer). */
export type HoldAuthorizer = {
  evaluate(request: AccessRequest, now?: Micros, lane?: 'lookup'): Promise<RegistryVerdict>;
  currentGeneration(): number;
  adoptGrant(grant: Grant, gen: number): void;
};

/** Where the hold asks which destinations a key has rows for (Registry.withClient). */
export type HoldRegistry = {
  withClient<T>(queryName: string, fn: (client: Queryable) => Promise<T>, lane: 'lookup'): Promise<T>;
};

export type AccessRequestHoldOptions = {
  readonly holdMs: number;
  readonly maxHeld: number;
  readonly maxHeldPerIdentity: number;
  readonly authorizer: HoldAuthorizer;
  readonly registry: HoldRegistry;
  /** True while registry notifications flow: without them nothing could wake a held CONNECT. */
  readonly listening: () => boolean;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger: AuthorizationLogger;
};

/** approve: a grant appeared; deny: answer the original denial; gone: the client went away. */
export type HoldResult =
  | { readonly kind: 'allow'; readonly grant: Grant; readonly heldMs: number }
  | { readonly kind: 'deny'; readonly heldMs: number }
  | { readonly kind: 'gone'; readonly heldMs: number };

type Outcome = 'approved' | 'timeout' | 'refused_full' | 'cancelled' | 'drained';

type Held = {
  readonly request: AccessRequest;
  readonly started: number;
  readonly finish: (result: HoldResult, outcome: Outcome) => void;
  running: boolean;
  again: boolean;
  done: boolean;
};

export class AccessRequestHold {
  private readonly held = new Set<Held>();
  /** Slots per proven key, reserved from the bounds check on (the grant probe included). */
  private readonly perKey = new Map<string, number>();
  private reserved = 0;
  private readonly queue = new Set<Held>();
  private running = 0;
  private wakeScheduled = false;
  private draining = false;
  private readonly outcomes: Record<Outcome, { inc(n?: number): void }> | undefined;

  constructor(private readonly opts: AccessRequestHoldOptions) {
    const c = opts.metrics?.accessRequestHolds;
    if (c !== undefined) {
      const outcomes = ['approved', 'timeout', 'refused_full', 'cancelled', 'drained'] as const;
      this.outcomes = Object.fromEntries(outcomes.map((o) => [o, c.labels({ outcome: o })])) as Record<
        Outcome,
        { inc(n?: number): void }
      >;
      for (const o of outcomes) this.outcomes[o].inc(0);
    }
    opts.metrics?.accessRequestsHeld.set(0);
  }

  /**
   * Called for a `no_permission` denial of `peer` to `destination`. Resolves at once with deny when the
   * CONNECT is not to be held (draining, no notifications, a bound reached, a key without any grant).
   */
  async hold(peer: PeerIdentity, destination: Destination, stream: ServerHttp2Stream): Promise<HoldResult> {
    const started = performance.now();
    if (this.draining || !this.opts.listening()) return { kind: 'deny', heldMs: 0 };
    const key = `${peer.identity}\n${peer.spkiDer.toString('base64')}`;
    const mine = this.perKey.get(key) ?? 0;
    if (this.reserved >= this.opts.maxHeld || mine >= this.opts.maxHeldPerIdentity) {
      this.outcomes?.refused_full.inc();
      return { kind: 'deny', heldMs: 0 };
    }
    this.reserve(key, 1);
    const request: AccessRequest = {
      identity: peer.identity,
      spkiDer: peer.spkiDer,
      destination: destination.normalized,
    };
    let eligible = false;
    try {
      eligible = await this.hasGrant(request);
    } finally {
      if (!eligible) this.reserve(key, -1);
    }
    if (!eligible) return { kind: 'deny', heldMs: performance.now() - started };
    if (this.draining || stream.destroyed || stream.closed) {
      this.reserve(key, -1);
      const heldMs = performance.now() - started;
      if (this.draining) return { kind: 'deny', heldMs };
      this.outcomes?.cancelled.inc();
      return { kind: 'gone', heldMs };
    }
    this.opts.logger.debug(
      {
        source_identity: boundedLogValue(peer.identity),
        destination: destination.normalized,
        hold_ms: this.opts.holdMs,
      },
      'CONNECT held: waiting for a grant',
    );
    return new Promise<HoldResult>((resolve) => {
      const onClose = () => entry.finish({ kind: 'gone', heldMs: performance.now() - started }, 'cancelled');
      const timer = setTimeout(
        () => entry.finish({ kind: 'deny', heldMs: performance.now() - started }, 'timeout'),
        Math.max(0, this.opts.holdMs - (performance.now() - started)),
      );
      const entry: Held = {
        request,
        started,
        running: false,
        again: false,
        done: false,
        finish: (result, outcome) => {
          if (entry.done) return;
          entry.done = true;
          clearTimeout(timer);
          stream.removeListener('close', onClose);
          this.held.delete(entry);
          this.queue.delete(entry);
          this.reserve(key, -1);
          this.opts.metrics?.accessRequestsHeld.set(this.held.size);
          this.outcomes?.[outcome].inc();
          resolve(result);
        },
      };
      stream.once('close', onClose);
      this.held.add(entry);
      this.opts.metrics?.accessRequestsHeld.set(this.held.size);
      // A grant made between the denial and now sent its notification before this CONNECT was held.
      this.enqueue(entry);
    });
  }

  /** Every registry notification (and EVERYTHING when the listener comes back up). */
  onRegistryChange(_change: RegistryChange): void {
    if (this.held.size === 0 || this.wakeScheduled) return;
    // One wake for a burst of notifications (a grant is a principal, a scope and a permission row).
    this.wakeScheduled = true;
    setImmediate(() => {
      this.wakeScheduled = false;
      for (const entry of this.held) this.enqueue(entry);
    });
  }

  /** Drain: every held CONNECT gets its denial now, and none is held from here on. */
  drain(): void {
    this.draining = true;
    for (const entry of [...this.held]) {
      entry.finish({ kind: 'deny', heldMs: performance.now() - entry.started }, 'drained');
    }
  }

  get size(): number {
    return this.held.size;
  }

  private reserve(key: string, delta: 1 | -1): void {
    this.reserved += delta;
    const n = (this.perKey.get(key) ?? 0) + delta;
    if (n <= 0) this.perKey.delete(key);
    else this.perKey.set(key, n);
  }

  /**
   * Whether the key holds a grant that the policy allows now, for any destination: a row in force is
   * not enough (its signature, signer or scope may not hold), so the first few are decided in full.
   */
  private async hasGrant(request: AccessRequest): Promise<boolean> {
    const now = nowMicros();
    let destinations: string[];
    try {
      destinations = await this.opts.registry.withClient(
        'granted_destinations',
        async (c) => {
          const r = await c.query<{ destination: string }>(GRANTED_DESTINATIONS_SQL, [
            request.identity,
            request.spkiDer,
            formatTimestamp(now),
          ]);
          return r.rows.map((row) => row.destination);
        },
        'lookup',
      );
    } catch (err) {
      this.opts.logger.debug({ err: errorText(err) }, 'access request hold: key not checked; not held');
      return false;
    }
    for (const destination of destinations) {
      const verdict = await this.opts.authorizer.evaluate({ ...request, destination }, now, 'lookup');
      if (verdict.kind === 'allow') return true;
    }
    return false;
  }

  private enqueue(entry: Held): void {
    if (entry.done) return;
    if (entry.running) {
      entry.again = true;
      return;
    }
    this.queue.add(entry);
    this.pump();
  }

  private pump(): void {
    while (this.running < WAKE_CONCURRENCY && this.queue.size > 0) {
      const entry = this.queue.values().next().value as Held;
      this.queue.delete(entry);
      this.running++;
      entry.running = true;
      void this.decide(entry).finally(() => {
        this.running--;
        entry.running = false;
        if (entry.again) {
          entry.again = false;
          this.enqueue(entry);
        }
        this.pump();
      });
    }
  }

  /** The CONNECT decision again, uncached; the generation is taken first, as a CONNECT lookup does. */
  private async decide(entry: Held): Promise<void> {
    const gen = this.opts.authorizer.currentGeneration();
    const verdict = await this.opts.authorizer.evaluate(entry.request, nowMicros(), 'lookup');
    if (entry.done) return;
    switch (verdict.kind) {
      case 'allow':
        this.opts.authorizer.adoptGrant(verdict.grant, gen);
        entry.finish(
          { kind: 'allow', grant: verdict.grant, heldMs: performance.now() - entry.started },
          'approved',
        );
        return;
      case 'deny':
        return;
      case 'unavailable':
        setTimeout(() => this.enqueue(entry), RETRY_MS).unref();
        return;
    }
  }
}
