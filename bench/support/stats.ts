/** Medians with min–max over repetitions, and their formatting. */

export type Spread = {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly n: number;
};

export function spread(samples: readonly number[]): Spread | undefined {
  const xs = samples.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (xs.length === 0) return undefined;
  const mid = Math.floor(xs.length / 2);
  const median =
    xs.length % 2 === 1 ? (xs[mid] as number) : ((xs[mid - 1] as number) + (xs[mid] as number)) / 2;
  return { median, min: xs[0] as number, max: xs.at(-1) as number, n: xs.length };
}

function fmt(x: number, digits: number): string {
  return x.toFixed(digits);
}

/** `median (min–max)`, or `–` when there is nothing. */
export function show(s: Spread | undefined, digits = 0, withRange = true): string {
  if (s === undefined) return '–';
  if (!withRange || s.n === 1 || s.min === s.max) return fmt(s.median, digits);
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

/** A ratio of two medians, e.g. `0.42`. */
export function ratio(a: Spread | undefined, b: Spread | undefined): string {
  if (a === undefined || b === undefined || b.median === 0) return '–';
  return (a.median / b.median).toFixed(2);
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}
