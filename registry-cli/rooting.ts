/**
 * What a root signs and when the CLI refuses to (docs/contract.md "Root of trust"): the canonical bytes
 * of a key or scope row as it stands, whether a row's signature verifies under a root, and the nesting
 * of windows the gateway demands (a scope within its key's window), refused before anything is signed.
 */
import {
  keyRowRootBytes,
  scopeRootFailure,
  scopeRowRootBytes,
  signerRootFailure,
  windowWithin,
} from '../core/policy.js';
import { parseTimestamp } from '../core/timestamp.js';
import { Refusal } from './errors.js';
import type { RootableKey, RootableScope } from './root-writes.js';
import { verifySignature } from './verify.js';

type KeyFields = Pick<RootableKey, 'keyId' | 'algorithm' | 'spkiDer' | 'notBefore' | 'notAfter'>;
type ScopeFields = Pick<
  RootableScope,
  'signingKeyId' | 'keySpkiDer' | 'destination' | 'notBefore' | 'notAfter'
>;

export const keyBytes = (k: KeyFields): Buffer => keyRowRootBytes(k);
export const scopeBytes = (s: ScopeFields): Buffer => scopeRowRootBytes(s, s.keySpkiDer);

/** Does the row carry a signature by root `rootId` (public key `rootSpki`)? The gateway's own check. */
export function keySignedBy(k: RootableKey, rootId: string, rootSpki: Buffer): boolean {
  return signerRootFailure(k, new Map([[rootId, rootSpki]]), verifySignature) === null;
}
export function scopeSignedBy(s: RootableScope, rootId: string, rootSpki: Buffer): boolean {
  return scopeRootFailure(s, s.keySpkiDer, new Map([[rootId, rootSpki]]), verifySignature) === null;
}

type Window = { readonly notBefore: string; readonly notAfter: string };

/** Why `inner` does not lie within `outer` (core/policy.ts windowWithin), or undefined when it does. */
export function windowNestError(innerName: string, inner: Window, outerName: string, outer: Window) {
  const micros = (w: Window) => ({
    notBefore: parseTimestamp(w.notBefore),
    notAfter: parseTimestamp(w.notAfter),
  });
  return windowWithin(micros(inner), micros(outer))
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
