/**
 * Receipt timestamps: core/timestamp.ts text (UTC, six fractional digits) with real microseconds. The
 * wall clock is read through performance.timeOrigin + performance.now(), which has sub-millisecond
 * resolution and costs no allocation beyond the number.
 */
import { performance } from 'node:perf_hooks';
import { formatTimestamp, type Micros } from '../../core/timestamp.js';

/** Microseconds since the epoch, now. */
export function receiptMicros(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

export function formatMicros(micros: number): string {
  return formatTimestamp(BigInt(micros) as Micros);
}

/** Now, as receipt text. */
export function receiptTime(): string {
  return formatMicros(receiptMicros());
}
