/**
 * The chain behind one permission row, link by link, for `agent-permissions check`: root → principal key
 * → scope → permission (docs/contract.md "Root of trust"). The decision itself is core/policy.ts's; this
 * says for each link which root or key signed it and whether that signature counts under the roots given.
 */
import { AmbiguousFieldError } from '../core/permission-bytes.js';
import {
  type Candidate,
  type CandidateVerdict,
  type RootFailure,
  scopeRootFailure,
  signerRootFailure,
  type TrustRoots,
} from '../core/policy.js';
import { InvalidTimestampError } from '../core/timestamp.js';
import { windowNestError } from './rooting.js';
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

/**
 * One root link in words. With roots the verdict is core/policy.ts's own (`failure`, the check that
 * decides signer_not_rooted / scope_not_rooted), so the explanation cannot disagree with the decision.
 */
function rootLink(
  m: Marked,
  failure: () => RootFailure | null,
  roots: TrustRoots,
): { valid: boolean; why: string } {
  if (roots.size === 0) {
    return m.rootKeyId == null || m.rootSignature == null
      ? { valid: true, why: 'no root signature (none required: no trust roots)' }
      : { valid: true, why: `signed by root ${m.rootKeyId} (not checked: no trust roots given)` };
  }
  let f: RootFailure | null;
  try {
    f = failure();
  } catch (err) {
    // The policy denies such a row invalid_row: it has no canonical bytes a root could have signed.
    if (err instanceof InvalidTimestampError || err instanceof AmbiguousFieldError)
      return { valid: false, why: `the row has no canonical bytes to verify: ${err.message}` };
    throw err;
  }
  if (f === null) return { valid: true, why: `signed by root ${m.rootKeyId}: valid` };
  switch (f.kind) {
    case 'unsigned':
      return { valid: false, why: 'no root signature' };
    case 'unknown_root':
      return { valid: false, why: `signed by root ${f.rootKeyId}, which is not a given trust root` };
    case 'bad_signature':
      return {
        valid: false,
        why: `the signature of root ${f.rootKeyId} does not verify over the row as stored`,
      };
  }
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
    const r = rootLink(k, () => signerRootFailure(k, roots, verifySignature), roots);
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
    // Without a key row no key's SPKI is bound: an empty one verifies nothing, as the gateway would not.
    const keySpki = k?.spkiDer ?? Buffer.alloc(0);
    let r = rootLink(s, () => scopeRootFailure(s, keySpki, roots, verifySignature), roots);
    const nest = k === null ? undefined : windowNestError('scope', s, `key ${k.keyId}`, k);
    if (roots.size > 0 && r.valid && s.replaysRevoked === true)
      r = {
        valid: false,
        why: `${r.why}, but a revoked scope of the same key and destination takes it away (the same signed fields, or revoked after its start): counts as revoked`,
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
