/**
 * Argument checks shared by the commands. Exit codes follow registry-cli/errors.ts: an argument that is
 * malformed in itself (a bad number, an unparseable destination, an id or identity with a control
 * character, a KEY_ID with whitespace) is a usage error (exit 2) in every command; well-formed input the
 * gateway would not honour is a refusal (exit 1).
 */
import { isAccessRequestId } from '../core/access-request-id.js';
import { errorText } from '../core/error-text.js';
import { assertEncodable } from '../core/permission-bytes.js';
import { UsageError } from './errors.js';

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

/**
 * A field that ends up in the registry and, for permissions, in the signed text: not empty, and nothing
 * the canonical text could not carry unambiguously (a control character such as a newline).
 */
export function checkField(field: string, value: string): string {
  if (value === '') throw new UsageError(`${field} is empty`);
  try {
    assertEncodable(field, value);
  } catch (err) {
    throw new UsageError(errorText(err), { cause: err });
  }
  return value;
}

// Whitespace (any Unicode space, line or paragraph separator), control and format characters (e.g.
// zero-width space, bidi overrides) and lone surrogates: invisible or ambiguous in a label.
const KEY_ID_FORBIDDEN = /[\s\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;

/**
 * KEY_ID is the principal's registry id and the label of its key in the TPM token, and admins type it
 * into shell commands: no whitespace, control or invisible format characters.
 */
export function checkKeyId(value: string): string {
  if (value === '') throw new UsageError('KEY_ID is empty');
  const bad = KEY_ID_FORBIDDEN.exec(value);
  if (bad !== null) {
    const code = bad[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0');
    throw new UsageError(
      `KEY_ID ${JSON.stringify(value)} contains U+${code} at position ${bad.index}: a key id becomes the TPM ` +
        'key label and the registry id, so it must not contain whitespace, control or invisible characters',
    );
  }
  return checkField('KEY_ID', value);
}

export function parseLimit(text: string): number {
  if (!/^\d{1,7}$/.test(text) || Number(text) < 1)
    throw new UsageError(`--limit must be a positive number, got ${JSON.stringify(text)}`);
  return Number(text);
}

/** How long a new grant lasts: whole days (VALID_DAYS, --days) or, for shorter ones, minutes (--for). */
export type Validity =
  | { readonly days: number; readonly minutes?: never }
  | { readonly minutes: number; readonly days?: never };

const MINUTES_PER_DAY = 1440;
const MINUTES_PER_UNIT = { m: 1, h: 60 } as const;

/**
 * A validity such as `30m`, `1h`, `12h` or `2d` (minutes, hours or days): approvals may be shorter than
 * the day VALID_DAYS counts in.
 */
export function parseDuration(text: string, what = '--for'): Validity {
  const m = /^(\d{1,8})([mhd])$/.exec(text.trim());
  if (m === null) {
    throw new UsageError(
      `${what} must be a number with a unit m, h or d (30m, 1h, 12h, 2d), got ${JSON.stringify(text)}`,
    );
  }
  const n = Number(m[1]);
  const unit = m[2] as 'm' | 'h' | 'd';
  const minutes = unit === 'd' ? n * MINUTES_PER_DAY : n * MINUTES_PER_UNIT[unit];
  if (minutes < 1 || minutes > MAX_VALID_DAYS * MINUTES_PER_DAY)
    throw new UsageError(`${what} must be between 1m and ${MAX_VALID_DAYS}d, got ${JSON.stringify(text)}`);
  return unit === 'd' ? { days: n } : { minutes };
}

/** An access request id as the gateway names it (core/access-request-id.ts); anything else is exit 2. */
export function parseRequestId(text: string): string {
  if (!isAccessRequestId(text))
    throw new UsageError(`REQUEST_ID must be req- and 20 lowercase hex digits, got ${JSON.stringify(text)}`);
  return text;
}
