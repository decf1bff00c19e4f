/**
 * Argument checks shared by the commands. A value the signed text could not carry unambiguously is a
 * refusal (exit 1), like any other grant the gateway would not honour; a malformed number is usage (2).
 */
import { assertEncodable } from '../core/permission-bytes.js';
import { Refusal, UsageError } from './errors.js';

/** Upper bound for VALID_DAYS: far beyond any sensible grant, well inside PostgreSQL's range. */
export const MAX_VALID_DAYS = 36_500;

export function parseValidDays(text: string, what = 'VALID_DAYS'): number {
  if (!/^\d{1,6}$/.test(text.trim()))
    throw new UsageError(`${what} must be a whole number of days, got ${JSON.stringify(text)}`);
  const days = Number(text.trim());
  if (days < 1 || days > MAX_VALID_DAYS)
    throw new UsageError(`${what} must be between 1 and ${MAX_VALID_DAYS}, got ${days}`);
  return days;
}

/** A field that ends up in the registry and, for permissions, in the signed text. */
export function checkField(field: string, value: string): string {
  if (value === '') throw new Refusal(`${field} is empty`);
  try {
    assertEncodable(field, value);
  } catch (err) {
    throw new Refusal((err as Error).message, { cause: err });
  }
  return value;
}

export function parseLimit(text: string): number {
  if (!/^\d{1,7}$/.test(text) || Number(text) < 1)
    throw new UsageError(`--limit must be a positive number, got ${JSON.stringify(text)}`);
  return Number(text);
}
