// `agent-permissions check`'s chain (registry-cli/check-chain.ts) against the policy it explains
// (docs/contract.md "Root of trust"): for each way a key or scope row can fail its root, the failing link
// is the one the decision names, with the words an admin reads; without roots no root link fails.
import { sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  type Candidate,
  evaluateCandidate,
  keyRowRootBytes,
  type ScopeRow,
  type SignerRow,
  scopeRowRootBytes,
  type TrustRoots,
} from '../../core/policy.js';
import { rootKeyId } from '../../core/root-signed-bytes.js';
import { formatTimestamp } from '../../core/timestamp.js';
import { explainChain } from '../../registry-cli/check-chain.js';
import { verifySignature } from '../../registry-cli/verify.js';
import { allowedCandidate, DAY, newP256, type P256, ts } from './fixtures/signed-rows.js';

const NOW = ts('2026-05-10T12:00:00.000000Z');
const root = newP256();
const stranger = newP256();
const ROOT = rootKeyId(root.spkiDer);
const STRANGER = rootKeyId(stranger.spkiDer);
const ROOTS: TrustRoots = new Map([[ROOT, root.spkiDer]]);
const der = (k: P256, m: Buffer) => sign('sha256', m, { key: k.privateKey, dsaEncoding: 'der' });
const keySigned = (k: SignerRow, by = root): SignerRow => ({
  ...k,
  rootKeyId: rootKeyId(by.spkiDer),
  rootSignature: der(by, keyRowRootBytes(k)),
});
const scopeSigned = (s: ScopeRow, by = root): ScopeRow => ({
  ...s,
  rootKeyId: rootKeyId(by.spkiDer),
  rootSignature: der(by, scopeRowRootBytes(s, base.signer!.spkiDer)),
});

const fx = allowedCandidate(NOW);
const base = fx.candidate;
const rooted: Candidate = { ...base, signer: keySigned(base.signer!), scope: scopeSigned(base.scope!) };
const withKey = (k: SignerRow): Candidate => ({ ...rooted, signer: k });
const withScope = (s: ScopeRow): Candidate => ({ ...rooted, scope: s });

type Case = [name: string, candidate: Candidate, verdict: string, keyWhy: string, scopeWhy: string];
const OK_KEY = `signed by root ${ROOT}: valid`;
const OK_SCOPE = OK_KEY;
const CASES: Case[] = [
  ['rooted chain', rooted, 'allow', OK_KEY, OK_SCOPE],
  ['key unsigned', withKey(base.signer!), 'signer_not_rooted', 'no root signature', OK_SCOPE],
  [
    'key signed by a root not given',
    withKey(keySigned(base.signer!, stranger)),
    'signer_not_rooted',
    `signed by root ${STRANGER}, which is not a given trust root`,
    OK_SCOPE,
  ],
  [
    'key window widened after signing',
    withKey({ ...rooted.signer!, notAfter: formatTimestamp(NOW + 400n * DAY) }),
    'signer_not_rooted',
    `the signature of root ${ROOT} does not verify over the row as stored`,
    // The scope still lies within the (widened) key window.
    OK_SCOPE,
  ],
  ['scope unsigned', withScope(base.scope!), 'scope_not_rooted', OK_KEY, 'no root signature'],
  [
    'scope signature by a stranger under the root id',
    withScope({
      ...rooted.scope!,
      rootSignature: der(stranger, scopeRowRootBytes(base.scope!, base.signer!.spkiDer)),
    }),
    'scope_not_rooted',
    OK_KEY,
    `the signature of root ${ROOT} does not verify over the row as stored`,
  ],
  [
    'scope repeating a revoked scope',
    withScope({ ...rooted.scope!, replaysRevoked: true }),
    'scope_revoked',
    OK_KEY,
    `${OK_SCOPE}, but a revoked scope of the same key and destination takes it away (the same signed fields, or revoked after its start): counts as revoked`,
  ],
  [
    'signed scope ending after its key',
    withScope(scopeSigned({ ...base.scope!, notAfter: formatTimestamp(NOW + 366n * DAY) })),
    'scope_not_rooted',
    OK_KEY,
    `${OK_SCOPE}, but scope window ${formatTimestamp(NOW - 10n * DAY)} .. ${formatTimestamp(NOW + 366n * DAY)} ` +
      `is not within key org-alice window ${base.signer!.notBefore} .. ${base.signer!.notAfter}`,
  ],
];

describe('check explains the root links with the decision', () => {
  it.each(CASES)('%s', (_name, candidate, expected, keyWhy, scopeWhy) => {
    const verdict = evaluateCandidate(fx.request, candidate, NOW, verifySignature, ROOTS);
    expect(verdict.ok ? 'allow' : verdict.reason).toBe(expected);
    const [key, scope, permission] = explainChain(candidate, verdict, ROOTS);
    expect(key).toMatchObject({ link: 'root -> key', why: keyWhy, valid: keyWhy === OK_KEY });
    expect(scope).toMatchObject({ link: 'key -> scope', why: scopeWhy, valid: scopeWhy === OK_SCOPE });
    expect(permission).toMatchObject({ link: 'scope -> permission', valid: verdict.ok });
    // The link the decision blames is the one that fails.
    if (expected === 'signer_not_rooted') expect(key!.valid).toBe(false);
    if (expected === 'scope_not_rooted' || expected === 'scope_revoked') {
      expect(key!.valid).toBe(true);
      expect(scope!.valid).toBe(false);
    }
  });

  it.each(CASES)('%s: without roots no root link fails and the decision is as before', (_n, candidate) => {
    const verdict = evaluateCandidate(fx.request, candidate, NOW, verifySignature, new Map());
    const links = explainChain(candidate, verdict, new Map());
    expect(links.map((l) => l.valid)).toEqual([true, true, verdict.ok]);
    const k = candidate.signer!.rootKeyId;
    expect(links[0]!.why).toBe(
      k == null
        ? 'no root signature (none required: no trust roots)'
        : `signed by root ${k} (not checked: no trust roots given)`,
    );
  });
});
