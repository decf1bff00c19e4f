/**
 * The one error type of the PKCS#11 signer. `kind` is what callers branch on (the registry CLI maps it
 * to an exit code, findKey to "missing"); the message names the token, key, store or variable at fault.
 */
import pkcs11js from 'pkcs11js';
import { errorText } from '../core/error-text.js';

export type SignerErrorKind =
  | 'config'
  | 'module_load'
  | 'tpm_unavailable'
  | 'token_not_found'
  | 'token_ambiguous'
  | 'token_create_failed'
  | 'pin_incorrect'
  | 'pin_locked'
  | 'key_not_found'
  | 'key_ambiguous'
  | 'key_unsupported'
  | 'sign_failed'
  | 'pkcs11';

export class SignerError extends Error {
  constructor(
    readonly kind: SignerErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SignerError';
  }
}

/** Run a PKCS#11 call, turning a Cryptoki error into a SignerError that says what was attempted. */
export function pkcs11Call<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof SignerError) throw err;
    throw new SignerError('pkcs11', `${what}: ${errorText(err)}`, { cause: err });
  }
}

/** The CKR_* name of a Cryptoki error (pkcs11js puts it in the message), else undefined. */
export function errorCode(err: unknown): string | undefined {
  if (err instanceof pkcs11js.Pkcs11Error) return err.message;
  return undefined;
}
