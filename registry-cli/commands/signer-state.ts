import { type Micros, parseTimestamp } from '../../core/timestamp.js';
import { Refusal } from '../errors.js';
import type { SigningKeyRow } from '../registry-writes.js';

/** Refuse to delegate or sign with a principal key the gateway would not accept right now. */
export function assertSignerUsable(
  keyId: string,
  key: SigningKeyRow | undefined,
  now: Micros,
): asserts key is SigningKeyRow {
  if (key === undefined) {
    throw new Refusal(
      `principal key ${keyId} is not registered: run register-principal-key.sh ${keyId} first`,
    );
  }
  if (key.revokedAt !== null) throw new Refusal(`principal key ${keyId} was revoked at ${key.revokedAt}`);
  if (now < parseTimestamp(key.notBefore)) {
    throw new Refusal(`principal key ${keyId} is not valid before ${key.notBefore}`);
  }
  if (now >= parseTimestamp(key.notAfter)) {
    throw new Refusal(
      `principal key ${keyId} expired at ${key.notAfter}: run register-principal-key.sh ${keyId} to renew it`,
    );
  }
}
