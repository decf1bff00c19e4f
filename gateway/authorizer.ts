/**
 * CONNECT-time authorization: registry candidates + the pure policy decision, behind two caches: verified
 * allows, and briefly, denials.
 *
 * Both caches are used only while the registry change listener is up, because a notification is the
 * only way to learn that a cached answer changed. Allows are dropped by any notification touching their
 * rows, age out after cacheTtlMs, and never outlive the grant's validUntil. Denials are dropped by any
 * notification at all (a new grant can turn any denial into an allow) and age out after denialTtlMs: they
 * exist so that a client repeating a refused CONNECT costs no registry query.
 *
 * Race safety: a lookup whose query started before an invalidation may carry a pre-change snapshot, so
 * it must not populate either cache. Every invalidation bumps `generation`; a lookup captures it before
 * querying and inserts only if it is unchanged when the answer arrives. The same generation numbers,
 * with a short log of recent changes, let live revocation spot a tunnel whose grant was decided before a
 * change that it only got to track after that change was processed.
 */
import { performance } from 'node:perf_hooks';
import { LRUCache } from 'lru-cache';
import type { Destination } from '../core/destination.js';
import type { PeerIdentity } from '../core/identity-extension.js';
import {
  type AccessRequest,
  type Candidate,
  decide,
  type PolicyDenyReason,
  type SignatureVerifier,
  type TrustRoots,
} from '../core/policy.js';
import { type Micros, nowMicros } from '../core/timestamp.js';
import type { AuthorizeResult, Authorizer, Grant } from './authorization.js';
import type { GatewayMetrics } from './metrics.js';
import type { ObserveRule } from './observe-identities.js';
import { permissionDigest } from './receipts/permission-digest.js';
import { changeTouchesGrant, EVERYTHING, type RegistryChange } from './registry-changes.js';
import {
  type AuthorizationLogger,
  errorText,
  RegistryUnavailableError,
  silentLogger,
} from './registry-errors.js';
import type { LaneName } from './registry-lane.js';
import { cachingVerifier } from './signature-verifier.js';

export type CandidateSource = {
  activeCandidates(request: AccessRequest, now: Micros, lane?: LaneName): Promise<Candidate[]>;
};

export type AuthorizerOptions = {
  readonly registry: CandidateSource;
  /** 0 disables the cache. */
  readonly cacheMaxEntries: number;
  readonly cacheTtlMs: number;
  /** How long a policy denial is remembered (same entry cap as allows); 0 = not at all. */
  readonly denialTtlMs?: number | undefined;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger?: AuthorizationLogger | undefined;
  /** Injectable clock for tests. */
  readonly now?: (() => Micros) | undefined;
  /** Parsed signer keys kept (signers are few; parsing SPKI costs more than the verify). */
  readonly keyCacheMaxEntries?: number | undefined;
  /** Recent changes remembered for grantMayBeStale(); older grants are simply re-checked. */
  readonly changeLogSize?: number | undefined;
  /** policy.trust_roots (docs/contract.md "Root of trust"); absent or empty = none. */
  readonly trustRoots?: TrustRoots | undefined;
  /** policy.observe_identities (gateway/observe-identities.ts); absent = observe nobody. */
  readonly observe?: ObserveRule | undefined;
  /** Receipts are on: grants carry the row's digest and signature (off: null, no lookup hashes rows). */
  readonly receipts?: boolean | undefined;
};

/** The uncached decision, with "could not ask" kept apart from "asked and denied". */
export type RegistryVerdict =
  | { readonly kind: 'allow'; readonly grant: Grant }
  | { readonly kind: 'deny'; readonly reason: PolicyDenyReason; readonly detail: string }
  | { readonly kind: 'unavailable'; readonly detail: string; readonly busy?: boolean };

type CacheEntry = { readonly grant: Grant; readonly expiresAt: Micros };
type DenialEntry = { readonly reason: PolicyDenyReason; readonly detail: string; readonly expiresAt: Micros };

export class RegistryAuthorizer implements Authorizer {
  private readonly registry: CandidateSource;
  private readonly metrics: GatewayMetrics | undefined;
  private readonly logger: AuthorizationLogger;
  private readonly now: () => Micros;
  private readonly cacheMax: number;
  private readonly cacheTtlMicros: Micros;
  private readonly cache: LRUCache<string, CacheEntry>;
  private readonly denials: LRUCache<string, DenialEntry>;
  private readonly denialTtlMicros: Micros;
  private readonly verifier: SignatureVerifier;
  private readonly observe: ObserveRule | undefined;
  private readonly receipts: boolean;
  private readonly allowSeconds: { observe(seconds: number): void } | undefined;
  private readonly denySeconds: { observe(seconds: number): void } | undefined;
  private listenerUp = false;
  private trustRoots: TrustRoots;
  private generation = 0;
  private readonly changeLog: { gen: number; change: RegistryChange }[] = [];
  private readonly changeLogSize: number;
  /**
   * The identity half of cache keys, per peer object: the TLS layer hands out one PeerIdentity per
   * certificate, and encoding its SPKI on every CONNECT was a measurable part of a cache hit.
   */
  private readonly peerKeys = new WeakMap<PeerIdentity, string>();
  /** Generation at which each grant handed out was decided (before its query). */
  private readonly grantGeneration = new WeakMap<Grant, number>();

  constructor(opts: AuthorizerOptions) {
    this.registry = opts.registry;
    this.metrics = opts.metrics;
    this.logger = opts.logger ?? silentLogger;
    this.now = opts.now ?? nowMicros;
    this.cacheMax = opts.cacheMaxEntries;
    this.cacheTtlMicros = BigInt(opts.cacheTtlMs) * 1000n;
    this.denialTtlMicros = BigInt(opts.denialTtlMs ?? 0) * 1000n;
    const max = Math.max(1, opts.cacheMaxEntries);
    this.cache = new LRUCache({ max });
    this.denials = new LRUCache({ max });
    this.changeLogSize = opts.changeLogSize ?? 4096;
    this.verifier = cachingVerifier(opts.keyCacheMaxEntries ?? 1024);
    this.trustRoots = opts.trustRoots ?? new Map();
    this.observe = opts.observe?.enabled === true ? opts.observe : undefined;
    this.receipts = opts.receipts === true;
    // Bound once: resolving a labelled series hashes the label object on every call.
    this.allowSeconds = opts.metrics?.decisionSeconds.labels({ result: 'allow' });
    this.denySeconds = opts.metrics?.decisionSeconds.labels({ result: 'deny' });
  }

  /**
   * Synchronous on a cache hit: a CONNECT whose decision is cached goes on to its dial in the same turn,
   * without the promise hops of a lookup it does not need.
   */
  authorize(peer: PeerIdentity, destination: Destination): AuthorizeResult | Promise<AuthorizeResult> {
    const started = performance.now();
    const now = this.now();
    const key = this.cacheUsable() ? this.cacheKey(peer, destination.normalized) : undefined;
    const hit = key === undefined ? undefined : (this.cachedAllow(key, now) ?? this.cachedDenial(key, now));
    if (hit !== undefined) return this.observed(hit, started);
    return this.lookup(peer, destination, key, now).then((result) => this.observed(result, started));
  }

  private observed(result: AuthorizeResult, started: number): AuthorizeResult {
    // The CONNECT's final outcome (agent_gateway_connect_decisions_total) is the connect handler's to
    // count: a policy allow may still be refused by a limit or the address guard.
    (result.allow ? this.allowSeconds : this.denySeconds)?.observe((performance.now() - started) / 1000);
    return result;
  }

  private cachedAllow(key: string, now: Micros): AuthorizeResult | undefined {
    const entry = this.cache.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= now || entry.grant.validUntil <= now) {
      this.cache.delete(key);
      return undefined;
    }
    this.metrics?.decisionCacheHits.inc();
    // A fresh object per hit: its generation is now, since any later change would have evicted it.
    const grant: Grant = { ...entry.grant };
    this.grantGeneration.set(grant, this.generation);
    return { allow: true, grant, cached: true };
  }

  private cachedDenial(key: string, now: Micros): AuthorizeResult | undefined {
    const entry = this.denials.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= now) {
      this.denials.delete(key);
      return undefined;
    }
    this.metrics?.denialCacheHits.inc();
    return { allow: false, reason: entry.reason, detail: entry.detail };
  }

  private async lookup(
    peer: PeerIdentity,
    destination: Destination,
    key: string | undefined,
    now: Micros,
  ): Promise<AuthorizeResult> {
    const request: AccessRequest = {
      identity: peer.identity,
      spkiDer: peer.spkiDer,
      destination: destination.normalized,
    };
    this.metrics?.decisionCacheMisses.inc();

    const gen = this.generation;
    const evaluation = await this.evaluate(request, now);
    switch (evaluation.kind) {
      case 'allow': {
        const grant = evaluation.grant;
        this.grantGeneration.set(grant, gen);
        // An observed allow is not cached: no notification names it, yet a row written for this
        // identity (even a revoked one) must end it at once.
        const cacheable = grant.observedDenyReason === undefined;
        if (
          cacheable &&
          key !== undefined &&
          gen === this.generation &&
          this.cacheTtlMicros > 0n &&
          this.cacheUsable()
        ) {
          const ttlEnd = now + this.cacheTtlMicros;
          // biome-ignore lint/complexity/useMathMinMax: Math.min does not take bigint.
          this.cache.set(key, { grant, expiresAt: ttlEnd < grant.validUntil ? ttlEnd : grant.validUntil });
        }
        return { allow: true, grant, cached: false };
      }
      case 'deny':
        if (key !== undefined && gen === this.generation && this.denialTtlMicros > 0n && this.cacheUsable()) {
          const { reason, detail } = evaluation;
          this.denials.set(key, { reason, detail, expiresAt: now + this.denialTtlMicros });
        }
        return { allow: false, reason: evaluation.reason, detail: evaluation.detail };
      case 'unavailable':
        return {
          allow: false,
          reason: evaluation.busy === true ? 'registry_busy' : 'registry_unavailable',
          detail: evaluation.detail,
        };
    }
  }

  /** JSON of [identity, SPKI] is self-delimiting, so appending the destination cannot collide. */
  private cacheKey(peer: PeerIdentity, destination: string): string {
    let prefix = this.peerKeys.get(peer);
    if (prefix === undefined) {
      prefix = JSON.stringify([peer.identity, peer.spkiDer.toString('base64')]);
      this.peerKeys.set(peer, prefix);
    }
    return `${prefix}${destination}`;
  }

  /**
   * The decision exactly as at CONNECT time, without the caches, asked on `lane`. Never rejects.
   */
  async evaluate(
    request: AccessRequest,
    now: Micros = this.now(),
    lane: LaneName = 'lookup',
  ): Promise<RegistryVerdict> {
    let candidates: Candidate[];
    try {
      candidates = await this.registry.activeCandidates(request, now, lane);
    } catch (err) {
      if (!(err instanceof RegistryUnavailableError)) {
        this.logger.error({ err: errorText(err) }, 'unexpected registry failure');
      }
      const busy = err instanceof RegistryUnavailableError && err.kind === 'busy';
      return { kind: 'unavailable', detail: errorText(err), busy };
    }
    try {
      const decision = decide(request, candidates, now, this.verifier, this.trustRoots);
      if (!decision.allow) {
        if (decision.reason === 'no_permission' && this.observe?.listed(request.identity) === true)
          return this.observeVerdict(request, now, lane, decision.detail);
        return { kind: 'deny', reason: decision.reason, detail: decision.detail };
      }
      const { permission, scope } = decision.candidate;
      return {
        kind: 'allow',
        grant: {
          identity: request.identity,
          spkiDer: request.spkiDer,
          destination: request.destination,
          permissionId: permission.permissionId,
          signingKeyId: permission.signingKeyId,
          // Once per registry lookup, never on a cache hit: the cached grant carries it.
          permissionSha256: this.receipts ? permissionDigest(permission) : null,
          permissionSignature: this.receipts ? permission.signature.toString('base64') : null,
          scopeId: scope?.id ?? '',
          validUntil: decision.validUntil,
        },
      };
    } catch (err) {
      // decide() is pure and total over well-formed rows; reaching here is a bug, and a bug denies.
      this.logger.error({ err: errorText(err) }, 'policy evaluation failed');
      return { kind: 'unavailable', detail: `policy evaluation failed: ${errorText(err)}` };
    }
  }

  /** Observe mode's half of evaluate(): the observed grant, or the no_permission it replaces. */
  private async observeVerdict(
    request: AccessRequest,
    now: Micros,
    lane: LaneName,
    detail: string,
  ): Promise<RegistryVerdict> {
    try {
      const grant = await this.observe!.observedGrant(request, now, lane);
      if (grant !== undefined) return { kind: 'allow', grant };
      return { kind: 'deny', reason: 'no_permission', detail };
    } catch (err) {
      if (!(err instanceof RegistryUnavailableError)) {
        this.logger.error({ err: errorText(err) }, 'unexpected registry failure');
      }
      const busy = err instanceof RegistryUnavailableError && err.kind === 'busy';
      return { kind: 'unavailable', detail: errorText(err), busy };
    }
  }

  /** Live revocation's re-check: the uncached decision on the recheck lane, never behind lookups. */
  recheck(request: AccessRequest, now: Micros): Promise<RegistryVerdict> {
    return this.evaluate(request, now, 'recheck');
  }

  /** Called for every registry notification, as soon as it arrives (before any coalescing). */
  onRegistryChange(change: RegistryChange): void {
    this.bump(change);
    this.denials.clear();
    if (change.table === '*') {
      this.cache.clear();
      return;
    }
    const touched: string[] = [];
    for (const [key, entry] of this.cache.entries()) {
      if (changeTouchesGrant(change, entry.grant)) touched.push(key);
    }
    for (const key of touched) this.cache.delete(key);
  }

  /**
   * Listener state from live revocation. Both transitions empty the cache and invalidate in-flight
   * lookups: going down, because notifications may now be missed; coming up, because lookups that
   * started while down were never protected by a notification.
   */
  setListenerUp(up: boolean): void {
    if (this.listenerUp === up) return;
    this.listenerUp = up;
    this.bump(EVERYTHING);
    this.cache.clear();
    this.denials.clear();
  }

  /**
   * True when a change processed since `grant` was decided may affect it (or when that cannot be told:
   * unknown grant object, or the change log no longer reaches back that far).
   */
  grantMayBeStale(grant: Grant): boolean {
    const gen = this.grantGeneration.get(grant);
    if (gen === undefined) return true;
    if (gen === this.generation) return false;
    const oldest = this.changeLog[0];
    if (oldest === undefined || oldest.gen > gen + 1) return true;
    for (let i = this.changeLog.length - 1; i >= 0; i--) {
      const entry = this.changeLog[i]!;
      if (entry.gen <= gen) break;
      if (changeTouchesGrant(entry.change, grant)) return true;
    }
    return false;
  }

  /**
   * SIGHUP with other trust roots. Decisions from now on use `roots`; the caller then runs the EVERYTHING
   * path of live revocation (LiveRevocation.handleChange), which empties both caches, marks every grant
   * decided before as stale and re-checks every open tunnel, so a removed root ends what it authorized.
   */
  setTrustRoots(roots: TrustRoots): void {
    this.trustRoots = roots;
  }

  /** Record a grant produced by evaluate() as decided at `gen` (live revocation swaps these in). */
  adoptGrant(grant: Grant, gen: number): void {
    this.grantGeneration.set(grant, gen);
  }

  currentGeneration(): number {
    return this.generation;
  }

  cacheStats(): { entries: number; enabled: boolean } {
    return { entries: this.cache.size, enabled: this.cacheUsable() };
  }

  private cacheUsable(): boolean {
    return this.cacheMax > 0 && this.listenerUp && (this.cacheTtlMicros > 0n || this.denialTtlMicros > 0n);
  }

  private bump(change: RegistryChange): void {
    this.generation++;
    this.changeLog.push({ gen: this.generation, change });
    if (this.changeLog.length > this.changeLogSize)
      this.changeLog.splice(0, this.changeLog.length - this.changeLogSize);
  }
}
