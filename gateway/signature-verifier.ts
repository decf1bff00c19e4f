/**
 * Signature checks for the policy (core/policy.ts SignatureVerifier) with parsed signer keys kept: the
 * authorizer verifies the same few principal and root keys on every lookup.
 */
import type { KeyObject } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { p256PublicKey, verifyDerSignature } from '../core/ecdsa.js';
import type { SignatureVerifier } from '../core/policy.js';

/**
 * Signature verification with parsed signer keys cached by SPKI bytes (bounded, LRU). A key that does
 * not parse as P-256 is cached as unusable, so a corrupt signer row costs one parse, and every
 * signature under it fails.
 */
export function cachingVerifier(maxEntries: number): SignatureVerifier {
  const keys = new LRUCache<string, { key: KeyObject | null }>({ max: Math.max(1, maxEntries) });
  return (spkiDer, message, signatureDer) => {
    const id = spkiDer.toString('base64');
    let slot = keys.get(id);
    if (slot === undefined) {
      let key: KeyObject | null;
      try {
        key = p256PublicKey(spkiDer);
      } catch {
        key = null;
      }
      slot = { key };
      keys.set(id, slot);
    }
    return slot.key !== null && verifyDerSignature(slot.key, message, signatureDer);
  };
}
