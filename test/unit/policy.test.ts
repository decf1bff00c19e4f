// The policy deny matrix (Smokescreen-style): one allowed fixture, one mutation per row, one expected
// verdict. decide() is pure, so every row is a plain function call.
import { describe, expect, it } from 'vitest';
import { type AccessRequest, type Candidate, decide } from '../../core/policy.js';
import { formatTimestamp, type Micros } from '../../core/timestamp.js';
import { cachingVerifier } from '../../gateway/signature-verifier.js';
import { allowedCandidate, DAY, newP256, permissionRow, ts } from './fixtures/signed-rows.js';

const NOW = ts('2026-05-10T12:00:00.000000Z');
const verify = cachingVerifier(64);

type Fixture = ReturnType<typeof allowedCandidate>;
type Case = {
  name: string;
  /** Returns the request and candidate list to decide on. */
  build: (fx: Fixture) => { request: AccessRequest; candidates: Candidate[]; now?: Micros };
  expected: string;
};

const withPermission = (fx: Fixture, patch: Partial<Candidate['permission']>): Candidate => ({
  ...fx.candidate,
  permission: { ...fx.candidate.permission, ...patch },
});
const withSigner = (fx: Fixture, patch: Partial<NonNullable<Candidate['signer']>>): Candidate => ({
  ...fx.candidate,
  signer: { ...fx.candidate.signer!, ...patch },
});
const withScope = (fx: Fixture, patch: Partial<NonNullable<Candidate['scope']>>): Candidate => ({
  ...fx.candidate,
  scope: { ...fx.candidate.scope!, ...patch },
});
const one = (fx: Fixture, c: Candidate) => ({ request: fx.request, candidates: [c] });
const t = formatTimestamp;

const CASES: Case[] = [
  { name: 'valid grant', build: (fx) => one(fx, fx.candidate), expected: 'allow' },
  {
    name: 'valid from exactly now',
    build: (fx) => ({ ...one(fx, fx.candidate), now: fx.spec.notBefore }),
    expected: 'allow',
  },
  // the request does not match the row
  {
    name: 'no candidate rows at all',
    build: (fx) => ({ request: fx.request, candidates: [] }),
    expected: 'no_permission',
  },
  {
    name: 'wrong destination host',
    build: (fx) => ({
      request: { ...fx.request, destination: 'evil.example.com:443' },
      candidates: [fx.candidate],
    }),
    expected: 'subject_mismatch',
  },
  {
    name: 'wrong destination port',
    build: (fx) => ({
      request: { ...fx.request, destination: 'api.example.com:8443' },
      candidates: [fx.candidate],
    }),
    expected: 'subject_mismatch',
  },
  {
    name: 'unknown identity',
    build: (fx) => ({ request: { ...fx.request, identity: 'agent-mallory' }, candidates: [fx.candidate] }),
    expected: 'subject_mismatch',
  },
  {
    name: 'identity differs only in case',
    build: (fx) => ({ request: { ...fx.request, identity: 'Agent-Alpha' }, candidates: [fx.candidate] }),
    expected: 'subject_mismatch',
  },
  {
    name: 'same identity, other key',
    build: (fx) => ({ request: { ...fx.request, spkiDer: newP256().spkiDer }, candidates: [fx.candidate] }),
    expected: 'subject_mismatch',
  },
  // permission row state
  {
    name: 'revoked permission',
    build: (fx) => one(fx, withPermission(fx, { revokedAt: t(NOW - DAY) })),
    expected: 'permission_revoked',
  },
  {
    name: 'expired permission',
    build: (fx) => ({ ...one(fx, fx.candidate), now: fx.spec.notAfter }),
    expected: 'permission_expired',
  },
  {
    name: 'permission not yet valid',
    build: (fx) => ({ ...one(fx, fx.candidate), now: fx.spec.notBefore - 1n }),
    expected: 'permission_not_yet_valid',
  },
  // signer state
  {
    name: 'signer missing',
    build: (fx) => one(fx, { ...fx.candidate, signer: null }),
    expected: 'signer_missing',
  },
  {
    name: 'signer row is another key id',
    build: (fx) => one(fx, withSigner(fx, { keyId: 'org-bob' })),
    expected: 'signer_missing',
  },
  {
    name: 'revoked signer',
    build: (fx) => one(fx, withSigner(fx, { revokedAt: t(NOW - 1n) })),
    expected: 'signer_revoked',
  },
  {
    name: 'expired signer',
    build: (fx) => one(fx, withSigner(fx, { notAfter: t(NOW) })),
    expected: 'signer_expired',
  },
  {
    name: 'signer not yet valid',
    build: (fx) => one(fx, withSigner(fx, { notBefore: t(NOW + 1n) })),
    expected: 'signer_not_yet_valid',
  },
  {
    name: 'signer valid from exactly now',
    build: (fx) => one(fx, withSigner(fx, { notBefore: t(NOW) })),
    expected: 'allow',
  },
  {
    name: 'signer algorithm unsupported',
    build: (fx) => one(fx, withSigner(fx, { algorithm: 'rsa_pss_sha256' })),
    expected: 'signer_algorithm_unsupported',
  },
  // delegation scope
  {
    name: 'signer scope missing',
    build: (fx) => one(fx, { ...fx.candidate, scope: null }),
    expected: 'scope_missing',
  },
  {
    name: 'scope for another destination',
    build: (fx) => one(fx, withScope(fx, { destination: 'other.example.com:443' })),
    expected: 'scope_missing',
  },
  {
    name: 'scope of another signer',
    build: (fx) => one(fx, withScope(fx, { signingKeyId: 'org-bob' })),
    expected: 'scope_missing',
  },
  {
    name: 'scope revoked',
    build: (fx) => one(fx, withScope(fx, { revokedAt: t(NOW - 1n) })),
    expected: 'scope_revoked',
  },
  {
    name: 'scope starts after the permission',
    build: (fx) => one(fx, withScope(fx, { notBefore: t(fx.spec.notBefore + 1n) })),
    expected: 'scope_window_too_narrow',
  },
  {
    name: 'scope ends before the permission',
    build: (fx) => one(fx, withScope(fx, { notAfter: t(fx.spec.notAfter - 1n) })),
    expected: 'scope_window_too_narrow',
  },
  {
    name: 'scope window exactly the permission window',
    build: (fx) => one(fx, withScope(fx, { notBefore: t(fx.spec.notBefore), notAfter: t(fx.spec.notAfter) })),
    expected: 'allow',
  },
  // tampering with each signed field (request adjusted so only the signature can catch it)
  {
    name: 'tampered permission_id',
    build: (fx) => one(fx, withPermission(fx, { permissionId: 'perm-2' })),
    expected: 'signature_invalid',
  },
  {
    name: 'tampered signing_key_id (re-pointed at another signer name with the same key)',
    build: (fx) => ({
      request: fx.request,
      candidates: [
        {
          permission: { ...fx.candidate.permission, signingKeyId: 'org-bob' },
          signer: { ...fx.candidate.signer!, keyId: 'org-bob' },
          scope: { ...fx.candidate.scope!, signingKeyId: 'org-bob' },
        },
      ],
    }),
    expected: 'signature_invalid',
  },
  {
    name: 'tampered subject_identity',
    build: (fx) => ({
      request: { ...fx.request, identity: 'agent-beta' },
      candidates: [withPermission(fx, { subjectIdentity: 'agent-beta' })],
    }),
    expected: 'signature_invalid',
  },
  {
    name: 'tampered subject_public_key_spki_der',
    build: (fx) => {
      const spki = newP256().spkiDer;
      return {
        request: { ...fx.request, spkiDer: spki },
        candidates: [withPermission(fx, { subjectSpkiDer: spki })],
      };
    },
    expected: 'signature_invalid',
  },
  {
    name: 'tampered destination',
    build: (fx) => ({
      request: { ...fx.request, destination: 'evil.example.com:443' },
      candidates: [
        {
          ...fx.candidate,
          permission: { ...fx.candidate.permission, destination: 'evil.example.com:443' },
          scope: { ...fx.candidate.scope!, destination: 'evil.example.com:443' },
        },
      ],
    }),
    expected: 'signature_invalid',
  },
  {
    name: 'tampered not_before (one microsecond)',
    build: (fx) => one(fx, withPermission(fx, { notBefore: t(fx.spec.notBefore + 1n) })),
    expected: 'signature_invalid',
  },
  {
    name: 'tampered not_after (extended)',
    build: (fx) => one(fx, withPermission(fx, { notAfter: t(fx.spec.notAfter + DAY) })),
    expected: 'signature_invalid',
  },
  {
    name: 'signature truncated',
    build: (fx) =>
      one(fx, withPermission(fx, { signature: fx.candidate.permission.signature.subarray(0, 10) })),
    expected: 'signature_invalid',
  },
  {
    name: 'empty signature',
    build: (fx) => one(fx, withPermission(fx, { signature: Buffer.alloc(0) })),
    expected: 'signature_invalid',
  },
  {
    name: 'signed by another key',
    build: (fx) => one(fx, { ...fx.candidate, permission: permissionRow(fx.spec, newP256().privateKey) }),
    expected: 'signature_invalid',
  },
  {
    name: 'signer row carries another key',
    build: (fx) => one(fx, withSigner(fx, { spkiDer: newP256().spkiDer })),
    expected: 'signature_invalid',
  },
  // rows that cannot be encoded or parsed
  {
    name: 'permission timestamp not canonical (milliseconds)',
    build: (fx) => one(fx, withPermission(fx, { notBefore: '2026-05-09T12:00:00.000Z' })),
    expected: 'invalid_row',
  },
  {
    name: 'permission timestamp empty (infinity in SQL)',
    build: (fx) => one(fx, withPermission(fx, { notAfter: '' })),
    expected: 'invalid_row',
  },
  {
    name: 'signer timestamp corrupt',
    build: (fx) => one(fx, withSigner(fx, { notAfter: '2026-02-30T00:00:00.000000Z' })),
    expected: 'invalid_row',
  },
  {
    name: 'scope timestamp corrupt',
    build: (fx) => one(fx, withScope(fx, { notBefore: 'yesterday' })),
    expected: 'invalid_row',
  },
  {
    name: 'control character in a signed field',
    build: (fx) => ({
      request: { ...fx.request, identity: 'agent\nalpha' },
      candidates: [withPermission(fx, { subjectIdentity: 'agent\nalpha' })],
    }),
    expected: 'invalid_row',
  },
];

describe('decide(): deny matrix', () => {
  it.each(CASES)('$name → $expected', ({ build, expected }) => {
    const fx = allowedCandidate(NOW);
    const { request, candidates, now } = build(fx);
    const d = decide(request, candidates, now ?? NOW, verify);
    expect(d.allow ? 'allow' : d.reason).toBe(expected);
    if (!d.allow) expect(d.detail.length).toBeGreaterThan(0);
  });
});

describe('decide(): several candidates', () => {
  it('allows on the first passing row and reports the earliest of the three not_afters', () => {
    const fx = allowedCandidate(NOW);
    const revoked = withPermission(fx, { revokedAt: t(NOW - 1n) });
    const scopeEnd = fx.spec.notAfter + DAY;
    const signerEnd = fx.spec.notAfter + 2n * DAY;
    const good: Candidate = {
      permission: fx.candidate.permission,
      signer: { ...fx.candidate.signer!, notAfter: t(signerEnd) },
      scope: { ...fx.candidate.scope!, notAfter: t(scopeEnd) },
    };
    const d = decide(fx.request, [revoked, good], NOW, verify);
    expect(d.allow).toBe(true);
    if (d.allow) {
      expect(d.candidate).toBe(good);
      expect(d.validUntil).toBe(fx.spec.notAfter);
      expect(d.evaluations.map((e) => e.verdict.ok)).toEqual([false, true]);
    }
    // The signer ending first bounds the grant.
    const shortSigner: Candidate = { ...good, signer: { ...good.signer!, notAfter: t(NOW + DAY) } };
    const d2 = decide(fx.request, [shortSigner], NOW, verify);
    expect(d2.allow && d2.validUntil).toBe(NOW + DAY);
  });

  it("a deny names the first row's reason and keeps every evaluation", () => {
    const fx = allowedCandidate(NOW);
    const d = decide(
      fx.request,
      [withPermission(fx, { revokedAt: t(NOW) }), withSigner(fx, { revokedAt: t(NOW) })],
      NOW,
      verify,
    );
    expect(d.allow).toBe(false);
    if (!d.allow) {
      expect(d.reason).toBe('permission_revoked');
      expect(d.evaluations.map((e) => (e.verdict.ok ? 'ok' : e.verdict.reason))).toEqual([
        'permission_revoked',
        'signer_revoked',
      ]);
    }
  });
});
