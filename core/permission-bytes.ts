/**
 * The exact bytes a principal signs for one permission row (SPEC §2, v1). Both the signer (registry CLI)
 * and the verifier (gateway) build them here.
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
  ) {
    super(
      `${field} ${JSON.stringify(value)} contains a control character (such as a newline): it would make the signed text ambiguous`,
    );
    this.name = 'AmbiguousFieldError';
  }
}

// A newline would let one field forge the lines after it. Every other control character is refused too:
// no legitimate id contains one and they make audit output lie. `=` is unambiguous because the field
// order is fixed and each line splits at its first `=`.
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Throws AmbiguousFieldError for a field that cannot be encoded unambiguously. */
export function assertEncodable(field: string, value: string): void {
  if (CONTROL.test(value)) throw new AmbiguousFieldError(field, value);
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
