/**
 * The seam between the request path (server, connect handler, tunnel) and authorization (registry,
 * policy, live revocation, limits). Types only: both sides build against these. ("Authority" in this
 * code always means a CONNECT request's `:authority`, the host:port asked for.)
 */
import type { Destination } from '../core/destination.js';
import type { IdentityFailure, PeerIdentity } from '../core/identity-extension.js';
import type { PolicyDenyReason } from '../core/policy.js';
import type { Micros } from '../core/timestamp.js';

/** Every reason a CONNECT can be refused, as logged (deny_reason) and counted (metrics label). */
export type DenyReason =
  | IdentityFailure
  | PolicyDenyReason
  | 'invalid_authority'
  | 'registry_unavailable'
  | 'registry_busy'
  | 'destination_address_denied'
  | 'rate_limited'
  | 'address_rate_limited'
  | 'identity_tunnel_limit'
  | 'tunnel_limit'
  | 'draining'
  /** Receipts cannot be written and receipts.on_failure is "deny" (docs/contract.md "Receipts"). */
  | 'receipts_unavailable';

/** What an allowed CONNECT was allowed by; recorded on the live tunnel so revocation can find it. */
export type Grant = {
  readonly identity: string;
  readonly spkiDer: Buffer;
  readonly destination: string;
  readonly permissionId: string;
  readonly signingKeyId: string;
  /**
   * Lowercase hex SHA-256 of the permission row's canonical signed bytes (core/permission-bytes.ts) and
   * the row's signature (DER, base64): what a receipt binds the tunnel to. Null for an observed grant,
   * and when receipts are off (nothing would read them).
   */
  readonly permissionSha256: string | null;
  readonly permissionSignature: string | null;
  readonly scopeId: string;
  /** Earliest not_after of permission, signer and scope. */
  readonly validUntil: Micros;
  /**
   * Set when no row allowed this and observe mode let it through (gateway/observe-identities.ts): the
   * reason it would have been denied. Then the ids above are empty and validUntil is the end of time.
   */
  readonly observedDenyReason?: 'no_permission' | undefined;
};

export type AuthorizeResult =
  | { readonly allow: true; readonly grant: Grant; readonly cached: boolean }
  | { readonly allow: false; readonly reason: DenyReason; readonly detail: string };

export interface Authorizer {
  /**
   * Never rejects: a registry error or timeout is a deny with reason registry_unavailable (fail closed).
   * May answer synchronously (a cached decision).
   */
  authorize(peer: PeerIdentity, destination: Destination): AuthorizeResult | Promise<AuthorizeResult>;
}

/**
 * Access requests (docs/contract.md "Access requests"): told about every policy denial, it answers the
 * request id for the 403 when the reason is one a grant would fix, and writes the request later.
 * Never blocks and never throws.
 */
export interface AccessRequestRecorder {
  record(peer: PeerIdentity, destination: Destination, reason: DenyReason): string | undefined;
}

/** An open tunnel as live revocation sees it. */
export interface LiveTunnel {
  readonly id: string;
  readonly peerAddr: string;
  /** Current grant; revocation re-checks may swap in another still-valid row. */
  grant: Grant;
  /** Reset the tunnel (RST_STREAM + upstream destroy) and log why. Idempotent. */
  revoke(reason: DenyReason | 'expired', detail: string): void;
}

export interface TunnelTracker {
  /** Start watching; the returned function stops watching (call on tunnel close). */
  track(tunnel: LiveTunnel): () => void;
}

export type LimitRejection = {
  readonly status: 429 | 503;
  readonly reason: 'rate_limited' | 'address_rate_limited' | 'identity_tunnel_limit' | 'tunnel_limit';
};

/** Per-client limits count by the proven key (identity + SPKI), never by the claimed identity alone. */
export interface TunnelLimits {
  /** Rate check at CONNECT time (before authorization, so floods cost no registry query). */
  admitConnect(peer: PeerIdentity): LimitRejection | undefined;
  /** Reserve a tunnel slot; the release function is idempotent. */
  acquireTunnel(peer: PeerIdentity): { readonly release: () => void } | LimitRejection;
}
