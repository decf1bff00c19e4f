// docs/contract.md "Root of trust": the policy with trust roots. Every new deny reason, windows nesting,
// and absent or empty roots deciding exactly as before, table-driven over the same rows.
import { type KeyObject, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  CANDIDATE_DENY_REASONS,
  type Candidate,
  decide,
  type ScopeRow,
  type SignerRow,
  type TrustRoots,
} from '../../core/policy.js';
import { canonicalPrincipalKeyBytes, canonicalScopeBytes, rootKeyId } from '../../core/root-signed-bytes.js';
import { formatTimestamp, parseTimestamp } from '../../core/timestamp.js';
import { cachingVerifier } from '../../gateway/signature-verifier.js';
import { allowedCandidate, DAY, newP256, type P256, ts } from './fixtures/signed-rows.js';

const NOW = ts('2026-05-10T12:00:00.000000Z');
const verify = cachingVerifier(64);
const rootA = newP256();
const rootB = newP256();
const rootsOf = (...keys: P256[]): TrustRoots => new Map(keys.map((k) => [rootKeyId(k.spkiDer), k.spkiDer]));

function signKey(k: SignerRow, root: KeyObject): Buffer {
  const bytes = canonicalPrincipalKeyBytes({
    ...k,
    notBefore: parseTimestamp(k.notBefore),
    notAfter: parseTimestamp(k.notAfter),
  });
  return sign('sha256', bytes, { key: root, dsaEncoding: 'der' });
}
function signScope(s: ScopeRow, keySpki: Buffer, root: KeyObject): Buffer {
  const bytes = canonicalScopeBytes({
    ...s,
    signingKeySpkiDer: keySpki,
    notBefore: parseTimestamp(s.notBefore),
    notAfter: parseTimestamp(s.notAfter),
  });
  return sign('sha256', bytes, { key: root, dsaEncoding: 'der' });
}
const rootedSigner = (k: SignerRow, root: P256): SignerRow => ({
  ...k,
  rootKeyId: rootKeyId(root.spkiDer),
  rootSignature: signKey(k, root.privateKey),
});
const rootedScope = (s: ScopeRow, keySpki: Buffer, root: P256): ScopeRow => ({
  ...s,
  rootKeyId: rootKeyId(root.spkiDer),
  rootSignature: signScope(s, keySpki, root.privateKey),
});

/** The allowed fixture with its key and scope rows signed by `root`. */
function rootedFixture(root: P256 = rootA) {
  const fx = allowedCandidate(NOW);
  const candidate: Candidate = {
    ...fx.candidate,
    signer: rootedSigner(fx.candidate.signer!, root),
    scope: rootedScope(fx.candidate.scope!, fx.candidate.signer!.spkiDer, root),
  };
  return { ...fx, candidate };
}
type Fx = ReturnType<typeof rootedFixture>;
const withSigner = (fx: Fx, patch: Partial<SignerRow>): Candidate => ({
  ...fx.candidate,
  signer: { ...fx.candidate.signer!, ...patch },
});
const withScope = (fx: Fx, patch: Partial<ScopeRow>): Candidate => ({
  ...fx.candidate,
  scope: { ...fx.candidate.scope!, ...patch },
});
const t = formatTimestamp;

type Case = { name: string; build: (fx: Fx) => Candidate; expected: string };
const CASES: Case[] = [
  { name: 'rooted chain', build: (fx) => fx.candidate, expected: 'allow' },
  {
    name: 'key and scope signed by another configured root',
    build: (fx) => ({
      ...fx.candidate,
      signer: rootedSigner(fx.candidate.signer!, rootB),
      scope: rootedScope(fx.candidate.scope!, fx.candidate.signer!.spkiDer, rootB),
    }),
    expected: 'allow',
  },
  {
    name: 'key without root signature',
    build: (fx) => withSigner(fx, { rootKeyId: null, rootSignature: null }),
    expected: 'signer_not_rooted',
  },
  {
    name: 'key row from before migration 0006 (fields absent)',
    build: (fx) => {
      const { rootKeyId: _id, rootSignature: _sig, ...v5 } = fx.candidate.signer!;
      return { ...fx.candidate, signer: v5 };
    },
    expected: 'signer_not_rooted',
  },
  {
    name: 'key signed by a root that is not configured',
    build: (fx) => ({ ...fx.candidate, signer: rootedSigner(fx.candidate.signer!, newP256()) }),
    expected: 'signer_not_rooted',
  },
  {
    name: 'key names a configured root, signature by another key',
    build: (fx) => withSigner(fx, { rootSignature: signKey(fx.candidate.signer!, newP256().privateKey) }),
    expected: 'signer_not_rooted',
  },
  {
    name: "another key row's valid root signature copied onto this key",
    build: (fx) => {
      const other: SignerRow = { ...fx.candidate.signer!, keyId: 'org-bob', spkiDer: newP256().spkiDer };
      return withSigner(fx, { rootSignature: rootedSigner(other, rootA).rootSignature });
    },
    expected: 'signer_not_rooted',
  },
  {
    name: 'key window widened after signing',
    build: (fx) => withSigner(fx, { notAfter: t(NOW + 400n * DAY) }),
    expected: 'signer_not_rooted',
  },
  {
    name: 'key material replaced after signing',
    build: (fx) => withSigner(fx, { spkiDer: newP256().spkiDer }),
    expected: 'signer_not_rooted',
  },
  {
    name: 'scope signature used as key signature (purpose line differs)',
    build: (fx) => withSigner(fx, { rootSignature: fx.candidate.scope!.rootSignature! }),
    expected: 'signer_not_rooted',
  },
  {
    name: 'scope without root signature',
    build: (fx) => withScope(fx, { rootKeyId: null, rootSignature: null }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'scope signed by a root that is not configured',
    build: (fx) => ({
      ...fx.candidate,
      scope: rootedScope(fx.candidate.scope!, fx.candidate.signer!.spkiDer, newP256()),
    }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'scope window widened after signing',
    build: (fx) => withScope(fx, { notBefore: t(NOW - 11n * DAY) }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'scope signed for another key under the same key id (a replaced key put back)',
    build: (fx) => ({ ...fx.candidate, scope: rootedScope(fx.candidate.scope!, newP256().spkiDer, rootA) }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'scope moved to another destination after signing',
    build: (fx) =>
      withScope(fx, {
        rootSignature: signScope(
          { ...fx.candidate.scope!, destination: 'x.example:443' },
          fx.candidate.signer!.spkiDer,
          rootA.privateKey,
        ),
      }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'key signature used as scope signature',
    build: (fx) => withScope(fx, { rootSignature: fx.candidate.signer!.rootSignature! }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'scope repeats a revoked scope (replayed root signature)',
    build: (fx) => withScope(fx, { replaysRevoked: true }),
    expected: 'scope_revoked',
  },
  {
    name: 'revoked scope',
    build: (fx) => withScope(fx, { revokedAt: t(NOW - DAY) }),
    expected: 'scope_revoked',
  },
  // windows nest: scope within key (scope_not_rooted), permission within scope (scope_window_too_narrow)
  {
    name: 'scope starts before its key (rooted, signed)',
    build: (fx) => ({
      ...fx.candidate,
      scope: rootedScope(
        { ...fx.candidate.scope!, notBefore: t(NOW - 11n * DAY) },
        fx.candidate.signer!.spkiDer,
        rootA,
      ),
    }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'scope ends after its key (rooted, signed)',
    build: (fx) => ({
      ...fx.candidate,
      scope: rootedScope(
        { ...fx.candidate.scope!, notAfter: t(NOW + 366n * DAY) },
        fx.candidate.signer!.spkiDer,
        rootA,
      ),
    }),
    expected: 'scope_not_rooted',
  },
  {
    name: 'scope exactly the key window',
    build: (fx) => fx.candidate,
    expected: 'allow',
  },
  {
    name: 'permission outlasts its rooted scope',
    build: (fx) => ({
      ...fx.candidate,
      scope: rootedScope(
        { ...fx.candidate.scope!, notAfter: t(NOW + 10n * DAY) },
        fx.candidate.signer!.spkiDer,
        rootA,
      ),
    }),
    expected: 'scope_window_too_narrow',
  },
];

describe('decide() with trust roots A and B', () => {
  it.each(CASES)('$name → $expected', ({ build, expected }) => {
    const fx = rootedFixture();
    const d = decide(fx.request, [build(fx)], NOW, verify, rootsOf(rootA, rootB));
    expect(d.allow ? 'allow' : d.reason).toBe(expected);
  });

  it('a key signed only by A is not rooted once only B is configured', () => {
    const fx = rootedFixture(rootA);
    expect(decide(fx.request, [fx.candidate], NOW, verify, rootsOf(rootA)).allow).toBe(true);
    const d = decide(fx.request, [fx.candidate], NOW, verify, rootsOf(rootB));
    expect(d.allow ? 'allow' : d.reason).toBe('signer_not_rooted');
    expect(d.allow ? '' : d.detail).toContain('not a configured trust root');
  });

  it('signer_not_rooted is checked before the scope, scope_not_rooted before the permission window', () => {
    const fx = rootedFixture();
    const both = { ...withSigner(fx, { rootSignature: null, rootKeyId: null }), scope: null };
    expect(decide(fx.request, [both], NOW, verify, rootsOf(rootA))).toMatchObject({
      reason: 'signer_not_rooted',
    });
    const order = CANDIDATE_DENY_REASONS as readonly string[];
    expect(order.indexOf('signer_not_rooted')).toBe(order.indexOf('signer_algorithm_unsupported') + 1);
    expect(order.indexOf('scope_not_rooted')).toBe(order.indexOf('scope_revoked') + 1);
    expect(order.indexOf('scope_window_too_narrow')).toBe(order.indexOf('scope_not_rooted') + 1);
  });
});

describe('absent or empty roots: decisions exactly as before', () => {
  // Every case decided with no roots and with an empty map must match the decision without the argument;
  // and with no roots, an unrooted, replayed or widened row decides as the original system did.
  const unrootedExpect: Record<string, string> = {
    'scope repeats a revoked scope (replayed root signature)': 'allow',
    'revoked scope': 'scope_revoked',
    'key material replaced after signing': 'signature_invalid',
    'permission outlasts its rooted scope': 'scope_window_too_narrow',
  };
  it.each(CASES)('$name', ({ name, build }) => {
    const fx = rootedFixture();
    const c = build(fx);
    const base = decide(fx.request, [c], NOW, verify);
    const empty = decide(fx.request, [c], NOW, verify, new Map());
    const undef = decide(fx.request, [c], NOW, verify, undefined);
    const outcome = (d: typeof base) => (d.allow ? 'allow' : d.reason);
    expect(outcome(empty)).toBe(outcome(base));
    expect(outcome(undef)).toBe(outcome(base));
    expect(outcome(base)).toBe(unrootedExpect[name] ?? 'allow');
  });
});
