/**
 * Registry timestamps at PostgreSQL's precision. A JavaScript Date keeps milliseconds, PostgreSQL keeps
 * microseconds: a timestamp that round-trips through Date changes the signed bytes. Timestamps therefore
 * travel as text in exactly the signed-bytes form (docs/contract.md "Signed bytes") and are compared as
 * bigint microseconds since the epoch.
 */
export type Micros = bigint;

/** RFC 3339, UTC, exactly six fractional digits, `Z`: the form in signed bytes and in SQL results. */
const CANONICAL = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z$/;

export class InvalidTimestampError extends Error {
  constructor(
    readonly input: string,
    why = 'expected YYYY-MM-DDTHH:MM:SS.ffffffZ',
  ) {
    super(`invalid timestamp ${JSON.stringify(input)}: ${why}`);
    this.name = 'InvalidTimestampError';
  }
}

/**
 * The instants with a four-digit year, 0000-01-01 to 9999-12-31: outside them toISOString writes a
 * six-digit signed year, the fixed-width slicing below drops the milliseconds, and two different
 * instants got the same signed text (found by test/fuzz/permission-bytes.fuzz.ts).
 */
const MIN_MICROS: Micros = -62_167_219_200_000_000n;
const MAX_MICROS: Micros = 253_402_300_799_999_999n;

export function parseTimestamp(text: string): Micros {
  const m = CANONICAL.exec(text);
  if (m === null) throw new InvalidTimestampError(text);
  const [, y, mo, d, h, mi, s, us] = m as unknown as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  // setUTCFullYear, not Date.UTC, which reads years 0..99 as 1900..1999: formatTimestamp writes them.
  const back = new Date(0);
  back.setUTCFullYear(Number(y), Number(mo) - 1, Number(d));
  back.setUTCHours(Number(h), Number(mi), Number(s));
  const ms = back.getTime();
  // Date rolls 2026-02-31 over to March (and month 13 into the next year); a registry value like
  // that is corrupt, not a date. Every component must survive the round trip.
  if (
    Number.isNaN(ms) ||
    back.getUTCFullYear() !== Number(y) ||
    back.getUTCMonth() !== Number(mo) - 1 ||
    back.getUTCDate() !== Number(d) ||
    back.getUTCHours() !== Number(h) ||
    back.getUTCMinutes() !== Number(mi) ||
    Number(s) > 59
  ) {
    throw new InvalidTimestampError(text);
  }
  return BigInt(ms) * 1000n + BigInt(us);
}

/** Throws InvalidTimestampError outside years 0000..9999, which the canonical form cannot write. */
export function formatTimestamp(micros: Micros): string {
  if (micros < MIN_MICROS || micros > MAX_MICROS) {
    throw new InvalidTimestampError(String(micros), 'microseconds outside the years 0000..9999');
  }
  const ms = micros / 1000n - (micros % 1000n < 0n ? 1n : 0n);
  const us = micros - ms * 1000n;
  const iso = new Date(Number(ms)).toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  return `${iso.slice(0, 23)}${us.toString().padStart(3, '0')}Z`;
}

export function nowMicros(): Micros {
  return BigInt(Date.now()) * 1000n;
}

export function microsToMs(micros: Micros): number {
  return Number(micros / 1000n);
}

export const MICROS_PER_DAY = 86_400_000_000n;
