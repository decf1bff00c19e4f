/**
 * What every registry lane and its callers share: one error type to fail closed on, the logger shape,
 * and how an error becomes text (core/error-text.ts, re-exported for them).
 */

export { errorText } from '../core/error-text.js';

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
export type AuthorizationLogger = {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
};

export const silentLogger: AuthorizationLogger = { info() {}, warn() {}, error() {}, debug() {} };
