import { p256PublicKey, verifyDerSignature } from '../core/ecdsa.js';
import type { SignatureVerifier } from '../core/policy.js';

/** The signature check the gateway's policy expects: a key that does not parse verifies nothing. */
export const verifySignature: SignatureVerifier = (signerSpkiDer, message, signatureDer) => {
  try {
    return verifyDerSignature(p256PublicKey(signerSpkiDer), message, signatureDer);
  } catch {
    return false;
  }
};
