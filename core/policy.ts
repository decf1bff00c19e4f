/**
 * The authorization decision as a pure function: candidate rows + clock → allow, or deny with a reason
 * from a closed set. The gateway runs it on every CONNECT and on every re-check of a live tunnel; the
 * registry CLI's `check` runs it to explain a decision. No I/O here: the signature check is passed in
 * so callers can cache parsed keys.
 */
import { ALGORITHM_ECDSA_P256_SHA256 } from './ecdsa.js';
import { AmbiguousFieldError, canonicalPermissionBytes } from './permission-bytes.js';
import { canonicalPrincipalKeyBytes, canonicalScopeBytes } from './root-signed-bytes.js';
import { InvalidTimestampError, type Micros, parseTimestamp } from './timestamp.js';

export type PermissionRow = {
  readonly permissionId: string;
  readonly signingKeyId: string;
  readonly subjectIdentity: string;
  readonly subjectSpkiDer: Buffer;
  readonly destination: string;
  /** Timestamps are canonical text (see timestamp.ts); null when not revoked. */
  readonly notBefore: string;
  readonly notAfter: string;
  readonly revokedAt: string | null;
  readonly signature: Buffer;
};

export type SignerRow = {
  readonly keyId: string;
  readonly algorithm: string;
  readonly spkiDer: Buffer;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly revokedAt: string | null;
  /** The root that signed this row (docs/contract.md "Root of trust"); absent or null = not rooted. */
  readonly rootKeyId?: string | null | undefined;
  readonly rootSignature?: Buffer | null | undefined;
};

export type ScopeRow = {
  readonly id: string;
  readonly signingKeyId: string;
  readonly destination: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly revokedAt: string | null;
  readonly rootKeyId?: string | null | undefined;
  readonly rootSignature?: Buffer | null | undefined;
  /**
   * A revoked scope row of the same key and destination has this row's window, or was revoked after
   * this row's start (core/registry-queries.ts revokedDelegation): with trust roots it counts as revoked.
   */
  readonly replaysRevoked?: boolean | undefined;
};

/**
 * The configured roots (gateway `policy.trust_roots`): root key id (core/root-signed-bytes.ts rootKeyId)
 * → SPKI DER. Empty = no root of trust, decisions exactly as without it.
 */
export type TrustRoots = ReadonlyMap<string, Buffer>;

/** One permission row with its signer and the signer's best scope row for that destination. */
export type Candidate = {
  readonly permission: PermissionRow;
  readonly signer: SignerRow | null;
  readonly scope: ScopeRow | null;
};

export type AccessRequest = {
  readonly identity: string;
  readonly spkiDer: Buffer;
  /** Already normalized (core/destination.ts). */
  readonly destination: string;
};

/** Why one candidate row does not authorize the request. */
export const CANDIDATE_DENY_REASONS = [
  'invalid_row',
  'subject_mismatch',
  'permission_revoked',
  'permission_not_yet_valid',
  'permission_expired',
  'signer_missing',
  'signer_revoked',
  'signer_not_yet_valid',
  'signer_expired',
  'signer_algorithm_unsupported',
  'signer_not_rooted',
  'scope_missing',
  'scope_revoked',
  'scope_not_rooted',
  'scope_window_too_narrow',
  'signature_invalid',
] as const;
export type CandidateDenyReason = (typeof CANDIDATE_DENY_REASONS)[number];

/** Every reason a policy decision can deny with. */
export type PolicyDenyReason = CandidateDenyReason | 'no_permission';

export type CandidateVerdict =
  | { readonly ok: true; readonly validUntil: Micros }
  | { readonly ok: false; readonly reason: CandidateDenyReason; readonly detail: string };

export type Evaluation = { readonly candidate: Candidate; readonly verdict: CandidateVerdict };

export type Decision =
  | {
      readonly allow: true;
      readonly candidate: Candidate;
      /** Earliest not_after of permission, signer and scope: the tunnel must end by then. */
      readonly validUntil: Micros;
      readonly evaluations: readonly Evaluation[];
    }
  | {
      readonly allow: false;
      readonly reason: PolicyDenyReason;
      readonly detail: string;
      readonly evaluations: readonly Evaluation[];
    };

/** Signature check over the canonical bytes with the signer's key. Must not throw. */
export type SignatureVerifier = (signerSpkiDer: Buffer, message: Buffer, signatureDer: Buffer) => boolean;

/**
 * Allow on the first candidate (callers pass them newest not_after first) that passes every check.
 * A deny reports the first candidate's reason: the row an operator most likely meant.
 */
export function decide(
  request: AccessRequest,
  candidates: readonly Candidate[],
  now: Micros,
  verify: SignatureVerifier,
  roots?: TrustRoots,
): Decision {
  const evaluations: Evaluation[] = [];
  for (const candidate of candidates) {
    const verdict = evaluateCandidate(request, candidate, now, verify, roots);
    evaluations.push({ candidate, verdict });
    if (verdict.ok) return { allow: true, candidate, validUntil: verdict.validUntil, evaluations };
  }
  const first = evaluations[0]?.verdict;
  if (first === undefined || first.ok) {
    return {
      allow: false,
      reason: 'no_permission',
      detail: 'no active permission row for this identity, key and destination',
      evaluations,
    };
  }
  return { allow: false, reason: first.reason, detail: first.detail, evaluations };
}

export function evaluateCandidate(
  request: AccessRequest,
  candidate: Candidate,
  now: Micros,
  verify: SignatureVerifier,
  roots?: TrustRoots,
): CandidateVerdict {
  const { permission: p, signer: k, scope: s } = candidate;
  const rooted = roots !== undefined && roots.size > 0;
  const deny = (reason: CandidateDenyReason, detail: string): CandidateVerdict => ({
    ok: false,
    reason,
    detail,
  });
  try {
    if (
      p.subjectIdentity !== request.identity ||
      p.destination !== request.destination ||
      !p.subjectSpkiDer.equals(request.spkiDer)
    ) {
      return deny(
        'subject_mismatch',
        `permission ${p.permissionId} is for another identity, key or destination`,
      );
    }
    const pNotBefore = parseTimestamp(p.notBefore);
    const pNotAfter = parseTimestamp(p.notAfter);
    if (p.revokedAt !== null)
      return deny('permission_revoked', `permission ${p.permissionId} revoked at ${p.revokedAt}`);
    if (now < pNotBefore)
      return deny('permission_not_yet_valid', `permission ${p.permissionId} valid from ${p.notBefore}`);
    if (now >= pNotAfter)
      return deny('permission_expired', `permission ${p.permissionId} expired at ${p.notAfter}`);

    if (k === null || k.keyId !== p.signingKeyId)
      return deny('signer_missing', `signing key ${p.signingKeyId} is not registered`);
    if (k.revokedAt !== null)
      return deny('signer_revoked', `signing key ${k.keyId} revoked at ${k.revokedAt}`);
    if (now < parseTimestamp(k.notBefore))
      return deny('signer_not_yet_valid', `signing key ${k.keyId} valid from ${k.notBefore}`);
    const kNotAfter = parseTimestamp(k.notAfter);
    if (now >= kNotAfter) return deny('signer_expired', `signing key ${k.keyId} expired at ${k.notAfter}`);
    if (k.algorithm !== ALGORITHM_ECDSA_P256_SHA256) {
      return deny('signer_algorithm_unsupported', `signing key ${k.keyId} has algorithm ${k.algorithm}`);
    }
    const kNotBefore = parseTimestamp(k.notBefore);
    if (rooted) {
      const failure = signerRootFailure(k, roots, verify);
      if (failure !== null)
        return deny('signer_not_rooted', `signing key ${k.keyId} ${rootFailureText(failure)}`);
    }

    if (s === null || s.signingKeyId !== k.keyId || s.destination !== p.destination) {
      return deny('scope_missing', `signing key ${k.keyId} has no delegation scope for ${p.destination}`);
    }
    if (s.revokedAt !== null)
      return deny(
        'scope_revoked',
        `scope ${s.id} of ${k.keyId} for ${s.destination} revoked at ${s.revokedAt}`,
      );
    const sNotBefore = parseTimestamp(s.notBefore);
    const sNotAfter = parseTimestamp(s.notAfter);
    if (rooted) {
      if (s.replaysRevoked === true) {
        return deny(
          'scope_revoked',
          `scope ${s.id} of ${k.keyId} for ${s.destination} is taken away by a revoked scope of that delegation (the same signed fields, or a revocation after its start)`,
        );
      }
      const failure = scopeRootFailure(s, k.spkiDer, roots, verify);
      if (failure !== null)
        return deny('scope_not_rooted', `scope ${s.id} of ${k.keyId} ${rootFailureText(failure)}`);
      const keyWindow = { notBefore: kNotBefore, notAfter: kNotAfter };
      if (!windowWithin({ notBefore: sNotBefore, notAfter: sNotAfter }, keyWindow)) {
        return deny(
          'scope_not_rooted',
          `scope ${s.id} [${s.notBefore}, ${s.notAfter}] does not lie within signing key ${k.keyId} [${k.notBefore}, ${k.notAfter}]`,
        );
      }
    }
    if (
      !windowWithin(
        { notBefore: pNotBefore, notAfter: pNotAfter },
        { notBefore: sNotBefore, notAfter: sNotAfter },
      )
    ) {
      return deny(
        'scope_window_too_narrow',
        `scope ${s.id} [${s.notBefore}, ${s.notAfter}] does not cover permission ${p.permissionId} [${p.notBefore}, ${p.notAfter}]`,
      );
    }

    const message = canonicalPermissionBytes({
      permissionId: p.permissionId,
      signingKeyId: p.signingKeyId,
      subjectIdentity: p.subjectIdentity,
      subjectSpkiDer: p.subjectSpkiDer,
      destination: p.destination,
      notBefore: pNotBefore,
      notAfter: pNotAfter,
    });
    if (!verify(k.spkiDer, message, p.signature)) {
      return deny(
        'signature_invalid',
        `signature of permission ${p.permissionId} does not verify with key ${k.keyId}`,
      );
    }
    return { ok: true, validUntil: minMicros(pNotAfter, kNotAfter, sNotAfter) };
  } catch (err) {
    if (err instanceof InvalidTimestampError || err instanceof AmbiguousFieldError) {
      return deny('invalid_row', `permission ${p.permissionId}: ${err.message}`);
    }
    throw err;
  }
}

/**
 * Why a row's root signature does not count (docs/contract.md "Root of trust"). Exported with the checks
 * below so that `agent-permissions check` explains each link with the very rule that decides it.
 */
export type RootFailure =
  | { readonly kind: 'unsigned' }
  | { readonly kind: 'unknown_root'; readonly rootKeyId: string }
  | { readonly kind: 'bad_signature'; readonly rootKeyId: string };

type RootMarked = {
  readonly rootKeyId?: string | null | undefined;
  readonly rootSignature?: Buffer | null | undefined;
};

type RootSignedKey = Pick<
  SignerRow,
  'keyId' | 'algorithm' | 'spkiDer' | 'notBefore' | 'notAfter' | 'rootKeyId' | 'rootSignature'
>;
type RootSignedScope = Pick<
  ScopeRow,
  'signingKeyId' | 'destination' | 'notBefore' | 'notAfter' | 'rootKeyId' | 'rootSignature'
>;

/**
 * What a root signs for a key row as stored: canonicalPrincipalKeyBytes of its fields. Throws
 * InvalidTimestampError / AmbiguousFieldError for a row that has none (evaluateCandidate: invalid_row).
 */
export function keyRowRootBytes(k: Omit<RootSignedKey, 'rootKeyId' | 'rootSignature'>): Buffer {
  return canonicalPrincipalKeyBytes({
    keyId: k.keyId,
    algorithm: k.algorithm,
    spkiDer: k.spkiDer,
    notBefore: parseTimestamp(k.notBefore),
    notAfter: parseTimestamp(k.notAfter),
  });
}

/**
 * What a root signs for a scope row as stored, delegated to the key whose SPKI is `keySpkiDer` (the
 * signer row's): canonicalScopeBytes of its fields (throws as above).
 */
export function scopeRowRootBytes(
  s: Omit<RootSignedScope, 'rootKeyId' | 'rootSignature'>,
  keySpkiDer: Uint8Array,
): Buffer {
  return canonicalScopeBytes({
    signingKeyId: s.signingKeyId,
    signingKeySpkiDer: keySpkiDer,
    destination: s.destination,
    notBefore: parseTimestamp(s.notBefore),
    notAfter: parseTimestamp(s.notAfter),
  });
}

/** The key row's root signature: null when it counts under `roots`. Throws as keyRowRootBytes. */
export function signerRootFailure(
  k: RootSignedKey,
  roots: TrustRoots,
  verify: SignatureVerifier,
): RootFailure | null {
  return rootFailure(k, () => keyRowRootBytes(k), roots, verify);
}

/**
 * The scope row's root signature, for the key whose SPKI is `keySpkiDer`: null when it counts under
 * `roots`. Throws as scopeRowRootBytes.
 */
export function scopeRootFailure(
  s: RootSignedScope,
  keySpkiDer: Uint8Array,
  roots: TrustRoots,
  verify: SignatureVerifier,
): RootFailure | null {
  return rootFailure(s, () => scopeRowRootBytes(s, keySpkiDer), roots, verify);
}

function rootFailure(
  row: RootMarked,
  message: () => Buffer,
  roots: TrustRoots,
  verify: SignatureVerifier,
): RootFailure | null {
  if (row.rootKeyId == null || row.rootSignature == null) return { kind: 'unsigned' };
  const root = roots.get(row.rootKeyId);
  if (root === undefined) return { kind: 'unknown_root', rootKeyId: row.rootKeyId };
  if (!verify(root, message(), row.rootSignature)) return { kind: 'bad_signature', rootKeyId: row.rootKeyId };
  return null;
}

function rootFailureText(f: RootFailure): string {
  switch (f.kind) {
    case 'unsigned':
      return 'has no root signature';
    case 'unknown_root':
      return `is signed by root ${f.rootKeyId}, which is not a configured trust root`;
    case 'bad_signature':
      return `has a root signature that does not verify with root ${f.rootKeyId}`;
  }
}

type MicrosWindow = { readonly notBefore: Micros; readonly notAfter: Micros };

/**
 * Windows nest (docs/contract.md "Root of trust"): `inner` lies within `outer`, bounds included. The
 * rule for a scope within its key and a permission within its scope; the CLI refuses by it before signing.
 */
export function windowWithin(inner: MicrosWindow, outer: MicrosWindow): boolean {
  return inner.notBefore >= outer.notBefore && inner.notAfter <= outer.notAfter;
}

function minMicros(...values: Micros[]): Micros {
  // biome-ignore lint/complexity/useMathMinMax: Math.min does not take bigint.
  return values.reduce((a, b) => (b < a ? b : a));
}
