/**
 * The value rules of receipt fields (docs/contract.md "Receipts"), checked by decodeReceipt after the
 * key order: a line whose keys are right but whose values are not what a gateway writes (a string
 * where a count belongs, a timestamp in another form, an unknown decision) is not a receipt. Only
 * types and closed sets here; what a value means for the chain or the registry is the verifier's.
 */
import type { Receipt } from './receipt-format.js';
import { InvalidTimestampError, parseTimestamp } from './timestamp.js';

/** `[receipts] instance_id` (with the `-w<index>` of a worker): also a directory name. */
export const GATEWAY_ID = /^[A-Za-z0-9._-]{1,64}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const TRACE_ID = /^[0-9a-f]{32}$/;
/**
 * Padded base64 exactly as Buffer.toString('base64') writes it: whole 4-character groups, `=` only at the
 * end, and the bits the padding leaves over are zero. Otherwise two spellings decode to the same bytes,
 * and the last record of a chain (whose hash nothing after it checks) could be edited in a signature
 * character without changing the signature (found by the single-byte-change property).
 */
const BASE64 =
  /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/][AQgw]==)$/;

export const TUNNEL_DECISIONS = ['allow', 'observe', 'deny'] as const;
export const GAP_REASONS = ['unclean_stop', 'torn_line', 'dropped'] as const;
export const CHECKPOINT_CAUSES = ['count', 'interval', 'rotate', 'stop'] as const;

/** Why a field's value is not one a receipt can carry; null when every field is well formed. */
export function receiptFieldProblem(r: Receipt): string | null {
  const f = r as unknown as Record<string, unknown>;
  const problems: (string | null)[] = [
    matches(f, 'gateway', GATEWAY_ID, 'an instance id ([A-Za-z0-9._-], 1..64)'),
  ];
  switch (r.kind) {
    case 'tunnel':
      problems.push(
        timestamp(f, 'opened'),
        timestamp(f, 'closed'),
        stringOrNull(f, 'source_identity'),
        nullOr(f, 'source_spki_sha256', (n) => matches(f, n, SHA256_HEX, 'a lowercase hex SHA-256')),
        string(f, 'peer_addr'),
        string(f, 'authority'),
        stringOrNull(f, 'destination'),
        Array.isArray(f['dialled']) && f['dialled'].every((d) => typeof d === 'string')
          ? null
          : 'dialled is not a list of strings',
        oneOf(f, 'decision', TUNNEL_DECISIONS),
        stringOrNull(f, 'deny_reason'),
        stringOrNull(f, 'permission_id'),
        nullOr(f, 'permission_sha256', (n) => matches(f, n, SHA256_HEX, 'a lowercase hex SHA-256')),
        nullOr(f, 'permission_signature', (n) => matches(f, n, BASE64, 'base64')),
        stringOrNull(f, 'signing_key_id'),
        count(f, 'bytes_up'),
        count(f, 'bytes_down'),
        count(f, 'duration_us'),
        stringOrNull(f, 'end_reason'),
        stringOrNull(f, 'end_detail'),
        nullOr(f, 'trace_id', (n) => matches(f, n, TRACE_ID, 'a W3C trace id (32 lowercase hex)')),
      );
      // A deny names its reason; an allow names the signed row it rests on (the verifier checks it).
      if (r.decision === 'deny' && r.deny_reason === null) problems.push('a deny without deny_reason');
      if (
        r.decision === 'allow' &&
        (r.permission_id === null ||
          r.permission_sha256 === null ||
          r.permission_signature === null ||
          r.signing_key_id === null)
      )
        problems.push(
          'an allow without permission_id, permission_sha256, permission_signature, signing_key_id',
        );
      break;
    case 'gap':
      problems.push(
        timestamp(f, 'at'),
        oneOf(f, 'reason', GAP_REASONS),
        nullOr(f, 'lost_receipts', (n) => count(f, n)),
        count(f, 'lost_bytes'),
        string(f, 'detail'),
      );
      break;
    case 'checkpoint':
      problems.push(
        timestamp(f, 'at'),
        oneOf(f, 'cause', CHECKPOINT_CAUSES),
        matches(f, 'key_id', SHA256_HEX, 'a lowercase hex SHA-256'),
        matches(f, 'sig', BASE64, 'base64'),
      );
      break;
  }
  return problems.find((p) => p !== null) ?? null;
}

type Fields = Record<string, unknown>;

function string(f: Fields, name: string): string | null {
  return typeof f[name] === 'string' ? null : `${name} is not a string`;
}

function stringOrNull(f: Fields, name: string): string | null {
  return f[name] === null || typeof f[name] === 'string' ? null : `${name} is not a string or null`;
}

function nullOr(f: Fields, name: string, check: (name: string) => string | null): string | null {
  if (f[name] === null) return null;
  const problem = check(name);
  return problem === null ? null : `${problem} or null`;
}

function matches(f: Fields, name: string, pattern: RegExp, what: string): string | null {
  const v = f[name];
  return typeof v === 'string' && pattern.test(v) ? null : `${name} is not ${what}`;
}

function oneOf(f: Fields, name: string, values: readonly string[]): string | null {
  const v = f[name];
  return typeof v === 'string' && values.includes(v) ? null : `${name} is not one of ${values.join(', ')}`;
}

function count(f: Fields, name: string): string | null {
  const v = f[name];
  return Number.isSafeInteger(v) && (v as number) >= 0 ? null : `${name} is not a non-negative integer`;
}

function timestamp(f: Fields, name: string): string | null {
  const v = f[name];
  try {
    if (typeof v !== 'string') throw new InvalidTimestampError(String(v));
    parseTimestamp(v);
    return null;
  } catch (err) {
    if (err instanceof InvalidTimestampError) return `${name} is not a timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ`;
    throw err;
  }
}
