/**
 * Properties of the canonical signed bytes (core/permission-bytes.ts, docs/contract.md "Signed bytes"):
 * building them throws only the named errors, is deterministic, and is injective over the signed fields,
 * so one signature can never cover two different rows.
 */
import * as fc from 'fast-check';
import {
  AmbiguousFieldError,
  canonicalPermissionBytes,
  type PermissionFields,
} from '../../core/permission-bytes.js';
import { InvalidTimestampError, type Micros } from '../../core/timestamp.js';
import { FULL_RUNS, type FuzzTarget, onlyThrows } from './fuzz-target.js';

const build = (row: PermissionFields) =>
  onlyThrows(() => canonicalPermissionBytes(row), AmbiguousFieldError, InvalidTimestampError);

/** Text fields: realistic ids, separator look-alikes, control characters, any UTF-16 (lone surrogates too). */
const text = fc.oneof(
  { weight: 3, arbitrary: fc.string({ unit: fc.constantFrom(...'abcxyz019-_.:=@ '), maxLength: 16 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 8 }) },
  {
    weight: 1,
    arbitrary: fc
      .array(
        fc.constantFrom(
          'a',
          '=',
          '\n',
          '\r',
          '\u2028',
          '\u0085',
          '\ufffd',
          '\ud800',
          '\udc00',
          '\ud83d\udca9',
          'destination=x',
        ),
        { maxLength: 6 },
      )
      .map((parts) => parts.join('')),
  },
);

/** Microseconds: around now (the common case), across the 0000..9999 years, and far outside them. */
const NOW: Micros = 1_780_000_000_000_000n;
const micros = fc.oneof(
  { weight: 3, arbitrary: fc.bigInt({ min: NOW - 10n ** 15n, max: NOW + 10n ** 15n }) },
  {
    weight: 2,
    arbitrary: fc.bigInt({
      min: -62_167_219_200_000_000n - 10n ** 12n,
      max: 253_402_300_800_000_000n + 10n ** 12n,
    }),
  },
  { weight: 1, arbitrary: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) },
);

export const permissionRow: fc.Arbitrary<PermissionFields> = fc.record({
  permissionId: text,
  signingKeyId: text,
  subjectIdentity: text,
  subjectSpkiDer: fc.uint8Array({ maxLength: 40 }),
  destination: text,
  notBefore: micros,
  notAfter: micros,
});

const FIELDS = [
  'permissionId',
  'signingKeyId',
  'subjectIdentity',
  'subjectSpkiDer',
  'destination',
  'notBefore',
  'notAfter',
] as const;
type Field = (typeof FIELDS)[number];
const fieldValue: { readonly [K in Field]: fc.Arbitrary<PermissionFields[K]> } = {
  permissionId: text,
  signingKeyId: text,
  subjectIdentity: text,
  subjectSpkiDer: fc.uint8Array({ maxLength: 40 }),
  destination: text,
  notBefore: micros,
  notAfter: micros,
};

function sameField(a: PermissionFields, b: PermissionFields, f: Field): boolean {
  const x = a[f];
  const y = b[f];
  if (x instanceof Uint8Array && y instanceof Uint8Array) return Buffer.from(x).equals(y);
  return x === y;
}

const sameRow = (a: PermissionFields, b: PermissionFields) => FIELDS.every((f) => sameField(a, b, f));

/** Different rows must not both encode, to the same bytes. */
function distinctBytes(a: PermissionFields, b: PermissionFields): boolean {
  if (sameRow(a, b)) return true;
  const x = build(a);
  const y = build(b);
  return !('value' in x && 'value' in y && x.value.equals(y.value));
}

/** Code units that collide if anything on the way to bytes is lossy (U+FFFD stands in for a lone surrogate). */
const NEAR_UNITS = ['\ud800', '\udc00', '\ufffd', 'a', 'A', '=', '\u2028', '\u00e9', 'e\u0301', ''];

/** A value close to `v`: one code unit replaced, a timestamp moved by a little, one byte changed. */
function near(v: PermissionFields[Field]): fc.Arbitrary<unknown> {
  if (typeof v === 'string') {
    return fc.tuple(fc.nat(), fc.constantFrom(...NEAR_UNITS)).map(([at, unit]) => {
      const i = at % (v.length + 1);
      return `${v.slice(0, i)}${unit}${v.slice(i + 1)}`;
    });
  }
  if (typeof v === 'bigint') {
    return fc.constantFrom(1n, -1n, 999n, 1000n, -1000n, 1_000_000n, 86_400_000_000n).map((d) => v + d);
  }
  return fc.tuple(fc.nat(), fc.nat({ max: 255 }), fc.boolean()).map(([at, b, grow]) => {
    const bytes = [...(v as Uint8Array)];
    if (grow || bytes.length === 0) bytes.splice(at % (bytes.length + 1), 0, b);
    else bytes[at % bytes.length] = b;
    return Uint8Array.from(bytes);
  });
}

/** A row and a copy of it with exactly one field changed: to a fresh value, or to a near one. */
const rowAndNeighbour = fc
  .tuple(permissionRow, fc.constantFrom(...FIELDS), fc.boolean())
  .chain(([row, field, close]) =>
    (close ? near(row[field]) : (fieldValue[field] as fc.Arbitrary<unknown>)).map(
      (v) => [row, { ...row, [field]: v } as PermissionFields] as const,
    ),
  );

export const permissionBytesTarget: FuzzTarget = {
  name: 'canonical signed bytes (core/permission-bytes.ts)',
  fullRuns: FULL_RUNS,
  properties: [
    {
      name: 'throws only AmbiguousFieldError or InvalidTimestampError, and is deterministic',
      property: fc.property(permissionRow, (row) => {
        const a = build(row);
        const b = build({ ...row, subjectSpkiDer: Uint8Array.from(row.subjectSpkiDer) });
        if ('error' in a) return 'error' in b && a.error.message === b.error.message;
        return 'value' in b && a.value.equals(b.value);
      }),
    },
    {
      name: 'rows differing in one signed field never produce the same bytes',
      property: fc.property(rowAndNeighbour, ([a, b]) => distinctBytes(a, b)),
    },
    {
      name: 'two random distinct rows never produce the same bytes',
      property: fc.property(permissionRow, permissionRow, distinctBytes),
    },
  ],
};
