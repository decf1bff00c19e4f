/**
 * The shape every parser fuzz module exports: named fast-check properties and how many inputs the target
 * gets. test/fuzz/parsers.test.ts runs a CI sample (CI_RUNS per target); test/fuzz/run.ts (`npm run
 * fuzz`) runs the full count (fullRuns per target), outside CI.
 */
import type * as fc from 'fast-check';

export type FuzzProperty = {
  readonly name: string;
  // biome-ignore lint/suspicious/noExplicitAny: properties over different input tuples share one list
  readonly property: fc.IProperty<any>;
};

export type FuzzTarget = {
  /** The parser under test, as the report names it. */
  readonly name: string;
  readonly properties: readonly FuzzProperty[];
  /** Inputs for the whole target in `npm run fuzz`, shared evenly by its properties. */
  readonly fullRuns: number;
};

/** Inputs per target in the normal test suite: enough to catch regressions, small enough for CI. */
export const CI_RUNS = 10_000;
/** Inputs per target in `npm run fuzz` (README "Testing"). */
export const FULL_RUNS = 1_000_000;

/** Each property's share of a target's inputs (rounded up, so the target gets at least `total`). */
export function runsPerProperty(target: FuzzTarget, total: number): number {
  return Math.ceil(total / target.properties.length);
}

/**
 * Runs `fn` and rethrows anything that is not one of `allowed`: the "never throws anything but its named
 * error" property. Returns the value, or the caught allowed error.
 */
export function onlyThrows<T>(
  fn: () => T,
  ...allowed: readonly (abstract new (
    ...args: never[]
  ) => Error)[]
): { readonly value: T } | { readonly error: Error } {
  try {
    return { value: fn() };
  } catch (err) {
    if (allowed.some((cls) => err instanceof cls)) return { error: err as Error };
    throw err;
  }
}
