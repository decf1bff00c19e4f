/**
 * Exit codes and error classes of the registry CLI. Scripts depend on the codes:
 * 0 done / allowed, 1 refused / denied (the registry is unchanged), 2 usage or environment error.
 * Malformed arguments are usage errors in every command (an unparseable destination, a field with a
 * control character, a KEY_ID with whitespace); well-formed requests the gateway would not honour (a
 * destination outside the signer's scope, a revoked signer, a key that is not P-256) are refusals.
 */
import { InvalidDestinationError } from '../core/destination.js';
import { InvalidPublicKeyError } from '../core/ecdsa.js';
import { errorText } from '../core/error-text.js';
import { AmbiguousFieldError } from '../core/permission-bytes.js';
import { SpkiInputError } from '../core/spki-input.js';
import { SignerError } from '../pkcs11/signer-error.js';

export const EXIT_OK = 0;
export const EXIT_REFUSED = 1;
export const EXIT_ENVIRONMENT = 2;
export type ExitCode = typeof EXIT_OK | typeof EXIT_REFUSED | typeof EXIT_ENVIRONMENT;

export class CliError extends Error {
  constructor(
    readonly exitCode: typeof EXIT_REFUSED | typeof EXIT_ENVIRONMENT,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CliError';
  }
}

/** The request is understood but would put something in the registry the gateway must not honour. */
export class Refusal extends CliError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(EXIT_REFUSED, message, options);
    this.name = 'Refusal';
  }
}

/** Arguments the command cannot work with. */
export class UsageError extends CliError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(EXIT_ENVIRONMENT, message, options);
    this.name = 'UsageError';
  }
}

/** Missing configuration, unreachable database or TPM. */
export class EnvironmentError extends CliError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(EXIT_ENVIRONMENT, message, options);
    this.name = 'EnvironmentError';
  }
}

/** Map the shared modules' typed errors onto exit codes; anything else is unexpected (exit 2). */
export function toCliError(err: unknown): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof SignerError) return new EnvironmentError(`TPM: ${err.message}`, { cause: err });
  if (
    err instanceof InvalidDestinationError ||
    err instanceof AmbiguousFieldError ||
    err instanceof SpkiInputError
  ) {
    return new UsageError(err.message, { cause: err });
  }
  if (err instanceof InvalidPublicKeyError) return new Refusal(err.message, { cause: err });
  const message = errorText(err);
  return new EnvironmentError(`unexpected error: ${message}`, { cause: err });
}
