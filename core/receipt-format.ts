/**
 * Tunnel receipts, version 1 (docs/contract.md "Receipts"): one JSON object per line, keys in a fixed
 * order per kind, no whitespace. The gateway writes them (gateway/receipts/) and the registry CLI
 * verifies them offline (`receipts verify`); both encode with this module, so "canonical" has one
 * meaning: a line is canonical when re-encoding its parsed object gives back exactly its bytes.
 *
 * Every record carries `prev`, the SHA-256 of the previous record's line (GENESIS_PREV for a chain's
 * first record), and `seq`, one more than the previous record's. A checkpoint record carries an ECDSA
 * P-256 signature over its own line without the signature; because it carries `prev`, one signature
 * vouches for every record before it in the chain.
 */
import { createHash } from 'node:crypto';
import { receiptFieldProblem } from './receipt-fields.js';

export const RECEIPT_FORMAT_VERSION = 1;
/** `prev` of the first record a chain ever has. */
export const GENESIS_PREV = '0'.repeat(64);

/** Key order of each kind; the order is the contract (docs/contract.md "Receipts"). */
export const RECEIPT_KEYS = {
  tunnel: [
    'v',
    'kind',
    'gateway',
    'seq',
    'opened',
    'closed',
    'source_identity',
    'source_spki_sha256',
    'peer_addr',
    'authority',
    'destination',
    'dialled',
    'decision',
    'deny_reason',
    'permission_id',
    'permission_sha256',
    'permission_signature',
    'signing_key_id',
    'bytes_up',
    'bytes_down',
    'duration_us',
    'end_reason',
    'end_detail',
    'trace_id',
    'prev',
  ],
  gap: ['v', 'kind', 'gateway', 'seq', 'at', 'reason', 'lost_receipts', 'lost_bytes', 'detail', 'prev'],
  checkpoint: ['v', 'kind', 'gateway', 'seq', 'at', 'cause', 'key_id', 'prev', 'sig'],
} as const;

export type ReceiptKind = keyof typeof RECEIPT_KEYS;

/**
 * One CONNECT's record: a tunnel that had its 200 (`decision` allow or observe), written when it ends,
 * or a denied CONNECT (`decision` deny, with receipts.include_denied). Timestamps are
 * core/timestamp.ts text (UTC, six fractional digits).
 */
export type TunnelReceipt = {
  readonly v: 1;
  readonly kind: 'tunnel';
  readonly gateway: string;
  readonly seq: number;
  readonly opened: string;
  readonly closed: string;
  readonly source_identity: string | null;
  /** Lowercase hex SHA-256 of the source certificate's SPKI DER; null when no identity was proven. */
  readonly source_spki_sha256: string | null;
  readonly peer_addr: string;
  /** The CONNECT's :authority as sent (bounded like the log lines). */
  readonly authority: string;
  /** Normalized destination (core/destination.ts); null when the authority was invalid. */
  readonly destination: string | null;
  /** `ip:port` of every address dialled, in order; the last one is the tunnel's. Empty for a deny. */
  readonly dialled: readonly string[];
  readonly decision: 'allow' | 'observe' | 'deny';
  readonly deny_reason: string | null;
  readonly permission_id: string | null;
  /** Lowercase hex SHA-256 of the permission row's canonical signed bytes (core/permission-bytes.ts). */
  readonly permission_sha256: string | null;
  /** The permission row's signature, DER, base64. */
  readonly permission_signature: string | null;
  readonly signing_key_id: string | null;
  /** Client → destination bytes. */
  readonly bytes_up: number;
  /** Destination → client bytes. */
  readonly bytes_down: number;
  readonly duration_us: number;
  /** gateway/tunnel.ts TunnelEndReason; null for a deny. */
  readonly end_reason: string | null;
  readonly end_detail: string | null;
  /** W3C trace id of the CONNECT's span; null when tracing is off. */
  readonly trace_id: string | null;
  readonly prev: string;
};

/** What the chain could not record: written as soon as the writer knows. */
export type GapReceipt = {
  readonly v: 1;
  readonly kind: 'gap';
  readonly gateway: string;
  readonly seq: number;
  readonly at: string;
  /**
   * unclean_stop: the previous run ended without its closing checkpoint (receipts of tunnels open then
   * were never written); torn_line: the last line on disk was incomplete and is kept aside; dropped:
   * receipts discarded while the disk could not take them.
   */
  readonly reason: 'unclean_stop' | 'torn_line' | 'dropped';
  /** Receipts known to be lost, or null when the count cannot be known (an unclean stop). */
  readonly lost_receipts: number | null;
  /** Bytes set aside (torn_line), else 0. */
  readonly lost_bytes: number;
  readonly detail: string;
  readonly prev: string;
};

/** A signature over the chain up to here. */
export type CheckpointReceipt = {
  readonly v: 1;
  readonly kind: 'checkpoint';
  readonly gateway: string;
  readonly seq: number;
  readonly at: string;
  /** count / interval: the batch filled or aged; rotate: the file ends here; stop: a clean shutdown. */
  readonly cause: 'count' | 'interval' | 'rotate' | 'stop';
  /** Lowercase hex SHA-256 of the receipt key's SPKI DER. */
  readonly key_id: string;
  readonly prev: string;
  /** ECDSA P-256 over SHA-256 of the line without this key (checkpointSignedBytes), DER, base64. */
  readonly sig: string;
};

export type Receipt = TunnelReceipt | GapReceipt | CheckpointReceipt;

/** A record before chaining: the writer assigns seq and prev (and a checkpoint's sig) when it writes. */
export type Unchained<R extends Receipt> = Omit<R, 'seq' | 'prev' | 'gateway'>;

/** The canonical line of a record (no trailing newline). */
export function encodeReceipt(r: Receipt): string {
  return encodeKeys(r, RECEIPT_KEYS[r.kind]);
}

/** The bytes a checkpoint's signature covers: its line up to and without `sig`. */
export function checkpointSignedBytes(r: Omit<CheckpointReceipt, 'sig'>): Buffer {
  return Buffer.from(encodeKeys(r, RECEIPT_KEYS.checkpoint.slice(0, -1)), 'utf8');
}

/** What the next record's `prev` must be. */
export function receiptHash(line: string): string {
  return createHash('sha256').update(line, 'utf8').digest('hex');
}

function encodeKeys(r: object, keys: readonly string[]): string {
  const values = r as Record<string, unknown>;
  let out = '{';
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i] as string;
    const value = values[key];
    if (value === undefined) throw new ReceiptFormatError(`field ${key} is missing`);
    out += `${i === 0 ? '' : ','}${JSON.stringify(key)}:${JSON.stringify(value)}`;
  }
  return `${out}}`;
}

export class ReceiptFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReceiptFormatError';
  }
}

/**
 * Parse one line; throws ReceiptFormatError naming what is wrong: not JSON, unknown kind or version,
 * keys other than the kind's in its order, a value of the wrong type (core/receipt-fields.ts), or bytes
 * that are not the canonical encoding.
 */
export function decodeReceipt(line: string): Receipt {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch (err) {
    throw new ReceiptFormatError(`not JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new ReceiptFormatError('not a JSON object');
  const obj = parsed as Record<string, unknown>;
  if (obj['v'] !== RECEIPT_FORMAT_VERSION)
    throw new ReceiptFormatError(`unknown version ${String(obj['v'])}`);
  const kind = obj['kind'];
  if (typeof kind !== 'string' || !Object.hasOwn(RECEIPT_KEYS, kind))
    throw new ReceiptFormatError(`unknown kind ${JSON.stringify(kind)}`);
  const keys = RECEIPT_KEYS[kind as ReceiptKind];
  const present = Object.keys(obj);
  if (present.length !== keys.length || present.some((k, i) => k !== keys[i]))
    throw new ReceiptFormatError(`keys are not those of a ${kind} record in order (${keys.join(', ')})`);
  const r = obj as unknown as Receipt;
  if (!Number.isSafeInteger(r.seq) || r.seq < 1)
    throw new ReceiptFormatError('seq is not a positive integer');
  if (typeof r.prev !== 'string' || !/^[0-9a-f]{64}$/.test(r.prev))
    throw new ReceiptFormatError('prev is not a lowercase hex SHA-256');
  const problem = receiptFieldProblem(r);
  if (problem !== null) throw new ReceiptFormatError(problem);
  if (encodeReceipt(r) !== line) throw new ReceiptFormatError('not the canonical encoding of its fields');
  return r;
}
