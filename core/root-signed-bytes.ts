/**
 * The exact bytes a root key signs for a principal key row and for a delegation scope row (v1,
 * docs/contract.md "Root-signed bytes"). The registry CLI signs them, the gateway verifies them; the
 * rules are those of the permission bytes (one field per line, fixed order, no escaping). The first line
 * is the purpose string, so a signature over one form can never be read as another.
 */
import { createHash } from 'node:crypto';
import { ALGORITHM_ECDSA_P256_SHA256 } from './ecdsa.js';
import { assertEncodable } from './permission-bytes.js';
import { formatTimestamp, type Micros } from './timestamp.js';

export const PRINCIPAL_KEY_FORMAT_V1 = 'agent-gateway-principal-key-v1';
export const PRINCIPAL_SCOPE_FORMAT_V1 = 'agent-gateway-principal-scope-v1';

export type PrincipalKeyFields = {
  readonly keyId: string;
  readonly algorithm: string;
  readonly spkiDer: Uint8Array;
  readonly notBefore: Micros;
  readonly notAfter: Micros;
};

export type ScopeFields = {
  readonly signingKeyId: string;
  /**
   * The SPKI DER of the key the scope is delegated to, bound by its SHA-256: a scope signed for one key
   * never counts for another key put under the same id (a replaced key's old row restored).
   */
  readonly signingKeySpkiDer: Uint8Array;
  /** Already normalized (core/destination.ts), as stored in the scope row. */
  readonly destination: string;
  readonly notBefore: Micros;
  readonly notAfter: Micros;
};

export function canonicalPrincipalKeyBytes(k: PrincipalKeyFields): Buffer {
  assertEncodable('key_id', k.keyId);
  assertEncodable('algorithm', k.algorithm);
  const text =
    `${PRINCIPAL_KEY_FORMAT_V1}\n` +
    `key_id=${k.keyId}\n` +
    `algorithm=${k.algorithm}\n` +
    `public_key_spki_der=${Buffer.from(k.spkiDer).toString('hex')}\n` +
    `not_before=${formatTimestamp(k.notBefore)}\n` +
    `not_after=${formatTimestamp(k.notAfter)}\n`;
  return Buffer.from(text, 'utf8');
}

export function canonicalScopeBytes(s: ScopeFields): Buffer {
  assertEncodable('signing_key_id', s.signingKeyId);
  assertEncodable('destination', s.destination);
  const text =
    `${PRINCIPAL_SCOPE_FORMAT_V1}\n` +
    `signing_key_id=${s.signingKeyId}\n` +
    `signing_key_spki_sha256=${createHash('sha256').update(s.signingKeySpkiDer).digest('hex')}\n` +
    `destination=${s.destination}\n` +
    `not_before=${formatTimestamp(s.notBefore)}\n` +
    `not_after=${formatTimestamp(s.notAfter)}\n`;
  return Buffer.from(text, 'utf8');
}

/** A root's self-certifying id: "sha256:" + lowercase hex SHA-256 of its SPKI DER. */
export function rootKeyId(spkiDer: Uint8Array): string {
  return `sha256:${createHash('sha256').update(spkiDer).digest('hex')}`;
}

/** The only algorithm a root key has (docs/contract.md "Root of trust"). */
export const ROOT_ALGORITHM = ALGORITHM_ECDSA_P256_SHA256;
