/**
 * The exact bytes a principal signs for one permission row (v1, docs/contract.md "Signed bytes"). Both
 * the signer (registry CLI) and the verifier (gateway) build them here.
 */
import { formatTimestamp, type Micros } from './timestamp.js';

export const PERMISSION_FORMAT_V1 = 'agent-gateway-permission-v1';

export type PermissionFields = {
  readonly permissionId: string;
  readonly signingKeyId: string;
  readonly subjectIdentity: string;
  readonly subjectSpkiDer: Uint8Array;
  readonly destination: string;
  readonly notBefore: Micros;
  readonly notAfter: Micros;
};

export class AmbiguousFieldError extends Error {
  constructor(
    readonly field: string,
    readonly value: string,
    why = 'contains a control character (such as a newline)',
  ) {
    super(`${field} ${JSON.stringify(value)} ${why}: it would make the signed text ambiguous`);
    this.name = 'AmbiguousFieldError';
  }
}

// A newline would let one field forge the lines after it. Every other control character is refused too:
// no legitimate id contains one and they make audit output lie. `=` is unambiguous because the field
// order is fixed and each line splits at its first `=`.
const CONTROL = /[\u0000-\u001f\u007f]/;
// A lone surrogate has no UTF-8 encoding: the bytes carry U+FFFD in its place, so two different values
// would sign as the same text (found by test/fuzz/permission-bytes.fuzz.ts). With the `u` flag this
// matches only unpaired halves.
const LONE_SURROGATE = /\p{Surrogate}/u;

/** Throws AmbiguousFieldError for a field that cannot be encoded unambiguously. */
export function assertEncodable(field: string, value: string): void {
  if (CONTROL.test(value)) throw new AmbiguousFieldError(field, value);
  if (LONE_SURROGATE.test(value)) {
    throw new AmbiguousFieldError(field, value, 'contains an unpaired UTF-16 surrogate (not Unicode text)');
  }
}

export function canonicalPermissionBytes(p: PermissionFields): Buffer {
  assertEncodable('permission_id', p.permissionId);
  assertEncodable('signing_key_id', p.signingKeyId);
  assertEncodable('subject_identity', p.subjectIdentity);
  assertEncodable('destination', p.destination);
  const text =
    `${PERMISSION_FORMAT_V1}\n` +
    `permission_id=${p.permissionId}\n` +
    `signing_key_id=${p.signingKeyId}\n` +
    `subject_identity=${p.subjectIdentity}\n` +
    `subject_public_key_spki_der=${Buffer.from(p.subjectSpkiDer).toString('hex')}\n` +
    `destination=${p.destination}\n` +
    `not_before=${formatTimestamp(p.notBefore)}\n` +
    `not_after=${formatTimestamp(p.notAfter)}\n`;
  return Buffer.from(text, 'utf8');
}
