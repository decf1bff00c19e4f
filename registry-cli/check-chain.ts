/**
 * The chain behind one permission row, link by link, for `agent-permissions check`: root → principal key
 * → scope → permission (docs/contract.md "Root of trust"). The decision itself is core/policy.ts's; this
 * says for each link which root or key signed it and whether that signature counts under the roots given.
 */
import type { Candidate, CandidateVerdict, TrustRoots } from '../core/policy.js';
import { keyBytes, scopeBytes, windowNestError } from './rooting.js';
import { verifySignature } from './verify.js';

export type ChainLink = {
  readonly link: 'root -> key' | 'key -> scope' | 'scope -> permission';
  readonly name: string;
  readonly signedBy: string | null;
  readonly valid: boolean;
  readonly why: string;
};

type Marked = {
  readonly rootKeyId?: string | null | undefined;
  readonly rootSignature?: Buffer | null | undefined;
};

function rootLink(m: Marked, bytes: () => Buffer, roots: TrustRoots): { valid: boolean; why: string } {
  if (m.rootKeyId == null || m.rootSignature == null) {
    return {
      valid: roots.size === 0,
      why: roots.size === 0 ? 'no root signature (none required: no trust roots)' : 'no root signature',
    };
  }
  if (roots.size === 0)
    return { valid: true, why: `signed by root ${m.rootKeyId} (not checked: no trust roots given)` };
  const root = roots.get(m.rootKeyId);
  if (root === undefined)
    return { valid: false, why: `signed by root ${m.rootKeyId}, which is not a given trust root` };
  let ok: boolean;
  try {
    ok = verifySignature(root, bytes(), m.rootSignature);
  } catch {
    ok = false;
  }
  return ok
    ? { valid: true, why: `signed by root ${m.rootKeyId}: valid` }
    : { valid: false, why: `the signature of root ${m.rootKeyId} does not verify over the row as stored` };
}

export function explainChain(c: Candidate, verdict: CandidateVerdict, roots: TrustRoots): ChainLink[] {
  const p = c.permission;
  const links: ChainLink[] = [];
  const k = c.signer;
  if (k === null) {
    links.push({
      link: 'root -> key',
      name: p.signingKeyId,
      signedBy: null,
      valid: false,
      why: 'key not registered',
    });
  } else {
    const r = rootLink(k, () => keyBytes(k), roots);
    links.push({
      link: 'root -> key',
      name: `principal key ${k.keyId}`,
      signedBy: k.rootKeyId ?? null,
      ...r,
    });
  }
  const s = c.scope;
  if (s === null) {
    links.push({
      link: 'key -> scope',
      name: `scope for ${p.destination}`,
      signedBy: null,
      valid: false,
      why: 'no scope row',
    });
  } else {
    const name = `scope ${s.id} (${s.signingKeyId} -> ${s.destination})`;
    let r = rootLink(s, () => scopeBytes(s), roots);
    const nest = k === null ? undefined : windowNestError('scope', s, `key ${k.keyId}`, k);
    if (roots.size > 0 && r.valid && s.replaysRevoked === true)
      r = {
        valid: false,
        why: `${r.why}, but it repeats the signed fields of a revoked scope: counts as revoked`,
      };
    else if (roots.size > 0 && r.valid && nest !== undefined)
      r = { valid: false, why: `${r.why}, but ${nest}` };
    if (s.revokedAt !== null) r = { valid: false, why: `revoked at ${s.revokedAt}; ${r.why}` };
    links.push({ link: 'key -> scope', name, signedBy: s.rootKeyId ?? null, ...r });
  }
  links.push({
    link: 'scope -> permission',
    name: `permission ${p.permissionId}`,
    signedBy: p.signingKeyId,
    valid: verdict.ok,
    why: verdict.ok
      ? `signed by principal key ${p.signingKeyId}: allow`
      : `${verdict.reason}: ${verdict.detail}`,
  });
  return links;
}
