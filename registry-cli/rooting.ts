/**
 * What a root signs and when the CLI refuses to (docs/contract.md "Root of trust"): the canonical bytes
 * of a key or scope row as it stands, whether a row's signature verifies under a root, and the nesting
 * of windows the gateway demands (a scope within its key's window), refused before anything is signed.
 */
import { canonicalPrincipalKeyBytes, canonicalScopeBytes } from '../core/root-signed-bytes.js';
import { parseTimestamp } from '../core/timestamp.js';
import { Refusal } from './errors.js';
import type { RootableKey, RootableScope, RootMark } from './root-writes.js';
import { verifySignature } from './verify.js';

type KeyFields = Pick<RootableKey, 'keyId' | 'algorithm' | 'spkiDer' | 'notBefore' | 'notAfter'>;
type ScopeFields = Pick<RootableScope, 'signingKeyId' | 'destination' | 'notBefore' | 'notAfter'>;

export function keyBytes(k: KeyFields): Buffer {
  return canonicalPrincipalKeyBytes({
    keyId: k.keyId,
    algorithm: k.algorithm,
    spkiDer: k.spkiDer,
    notBefore: parseTimestamp(k.notBefore),
    notAfter: parseTimestamp(k.notAfter),
  });
}

export function scopeBytes(s: ScopeFields): Buffer {
  return canonicalScopeBytes({
    signingKeyId: s.signingKeyId,
    destination: s.destination,
    notBefore: parseTimestamp(s.notBefore),
    notAfter: parseTimestamp(s.notAfter),
  });
}

/** Does the row carry a signature by root `rootId` (public key `rootSpki`) over `bytes`? */
export function signedBy(m: RootMark, rootId: string, rootSpki: Buffer, bytes: Buffer): boolean {
  return (
    m.rootKeyId === rootId && m.rootSignature !== null && verifySignature(rootSpki, bytes, m.rootSignature)
  );
}

type Window = { readonly notBefore: string; readonly notAfter: string };

/** Why `inner` does not lie within `outer`, or undefined when it does. */
export function windowNestError(innerName: string, inner: Window, outerName: string, outer: Window) {
  const within =
    parseTimestamp(inner.notBefore) >= parseTimestamp(outer.notBefore) &&
    parseTimestamp(inner.notAfter) <= parseTimestamp(outer.notAfter);
  return within
    ? undefined
    : `${innerName} window ${inner.notBefore} .. ${inner.notAfter} is not within ${outerName} window ` +
        `${outer.notBefore} .. ${outer.notAfter}`;
}

/** Refuse to root-sign a scope that does not lie within its key's window: the gateway would deny it. */
export function assertScopeNests(s: ScopeFields, key: Window): void {
  const why = windowNestError(
    `scope ${s.signingKeyId} -> ${s.destination}`,
    s,
    `principal key ${s.signingKeyId}`,
    key,
  );
  if (why !== undefined) {
    throw new Refusal(
      `${why}; a root signs a scope only within its key's window: shorten the scope with --valid-days, ` +
        `or extend the key with register-principal-key.sh ${s.signingKeyId} (nothing was signed)`,
    );
  }
}
