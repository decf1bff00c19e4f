/**
 * The gateway's roots of trust (docs/contract.md "Root of trust"): `policy.trust_roots` (base64 SPKI DER)
 * and `policy.trust_root_files` (PEM `PUBLIC KEY` files), each a P-256 key, keyed by their
 * self-certifying id. Parsed with core/spki-input.ts and core/ecdsa.ts, never by hand.
 */
import { readFileSync } from 'node:fs';
import type { TrustRoots } from '../core/policy.js';
import { rootKeyId } from '../core/root-signed-bytes.js';
import { assertP256Spki, parseSpkiBytes } from '../core/spki-input.js';

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** One base64 SPKI DER entry of policy.trust_roots → [root id, SPKI DER]. Throws Error with the reason. */
export function trustRootFromBase64(text: string): [string, Buffer] {
  const compact = text.replace(/\s+/g, '');
  const der = Buffer.from(compact, 'base64');
  // Buffer.from ignores what is not base64; a typo must not silently become another key.
  if (!BASE64.test(compact) || der.toString('base64') !== compact) {
    throw new Error('not base64 of a DER SubjectPublicKeyInfo');
  }
  return rootFrom(der, 'spki-der');
}

/** One PEM file of policy.trust_root_files → [root id, SPKI DER]. */
export function trustRootFromFile(path: string): [string, Buffer] {
  return rootFrom(readFileSync(path), 'spki-pem', `file ${path}`);
}

function rootFrom(bytes: Buffer, expected: 'spki-der' | 'spki-pem', what = 'entry'): [string, Buffer] {
  const input = parseSpkiBytes(bytes, what);
  if (input.source !== expected) {
    throw new Error(
      expected === 'spki-pem'
        ? `${what} must hold a PEM PUBLIC KEY, found ${input.source}`
        : `expected a SubjectPublicKeyInfo, found ${input.source}`,
    );
  }
  assertP256Spki(input.spkiDer);
  return [rootKeyId(input.spkiDer), input.spkiDer];
}

/** The root ids in force, sorted: what startup and SIGHUP log. */
export function trustRootIds(roots: TrustRoots): string[] {
  return [...roots.keys()].sort();
}

/** Same ids, same keys. */
export function sameTrustRoots(a: TrustRoots, b: TrustRoots): boolean {
  if (a.size !== b.size) return false;
  for (const [id, spki] of a) if (!b.get(id)?.equals(spki)) return false;
  return true;
}
