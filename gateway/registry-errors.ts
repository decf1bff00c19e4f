/**
 * What every registry lane and its callers share: one error type to fail closed on, the logger shape,
 * and how an error becomes text.
 */

export type RegistryErrorKind = 'acquire_timeout' | 'connect' | 'query_timeout' | 'query' | 'closed' | 'busy';

export class RegistryUnavailableError extends Error {
  constructor(
    readonly kind: RegistryErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`registry unavailable (${kind}): ${message}`, options);
    this.name = 'RegistryUnavailableError';
  }
}

/** pino-compatible subset, so tests can pass a stub and main.ts its pino logger. */
export type AuthorityLogger = {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
};

export const silentLogger: AuthorityLogger = { info() {}, warn() {}, error() {}, debug() {} };

export function errorText(err: unknown): string {
  if (err instanceof Error) {
    // AggregateError (e.g. ECONNREFUSED on both ::1 and 127.0.0.1) has an empty message.
    if (err.message === '' && err instanceof AggregateError) {
      return err.errors.map((e) => errorText(e)).join('; ') || err.name;
    }
    return err.message || err.name;
  }
  return String(err);
}
