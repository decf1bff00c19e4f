/**
 * Registry timestamps at PostgreSQL's precision. A JavaScript Date keeps milliseconds, PostgreSQL keeps
 * microseconds: a timestamp that round-trips through Date changes the signed bytes. Timestamps therefore
 * travel as text in exactly the SPEC §2 form and are compared as bigint microseconds since the epoch.
 */
export type Micros = bigint;

/** RFC 3339, UTC, exactly six fractional digits, `Z`: the form in signed bytes and in SQL results. */
const CANONICAL = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z$/;

export class InvalidTimestampError extends Error {
  constructor(readonly input: string) {
    super(`invalid timestamp ${JSON.stringify(input)}: expected YYYY-MM-DDTHH:MM:SS.ffffffZ`);
    this.name = 'InvalidTimestampError';
  }
}

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
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s));
  const back = new Date(ms);
  // Date.UTC rolls 2026-02-31 over to March (and month 13 into the next year); a registry value like
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

export function formatTimestamp(micros: Micros): string {
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
