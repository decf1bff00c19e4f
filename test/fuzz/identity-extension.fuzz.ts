/**
 * Properties of the client identity parser (core/identity-extension.ts, docs/contract.md "Client
 * identity"): whatever bytes a client presents, readPeerIdentity returns one of its named failures and
 * never throws; an accepted identity is the one DER UTF8String encoding of itself; every well-formed
 * identity round-trips.
 */
import * as fc from 'fast-check';
import {
  DEFAULT_IDENTITY_OID,
  encodeIdentityExtensionValue,
  type IdentityFailure,
  type IdentityResult,
  readPeerIdentity,
} from '../../core/identity-extension.js';
import { certificateDer, derLength, type RawExtension, TEMPLATE_SPKI_DER } from './der.js';
import { FULL_RUNS, type FuzzTarget } from './fuzz-target.js';

const OID = DEFAULT_IDENTITY_OID;
const SAN = '2.5.29.17';
const FAILURES: readonly IdentityFailure[] = [
  'missing_client_certificate',
  'invalid_client_certificate',
  'missing_identity_extension',
  'invalid_identity_extension',
];

/** Well-formed result: a named failure with a detail, or a non-empty well-formed identity. */
function isNamedResult(r: IdentityResult): boolean {
  if (!r.ok) return FAILURES.includes(r.reason) && typeof r.detail === 'string' && r.detail !== '';
  return r.peer.identity !== '' && Buffer.from(r.peer.identity, 'utf8').toString('utf8') === r.peer.identity;
}

/** Tags near UTF8String (0x0c): other string types, constructed form, high-tag-number form. */
const tagBytes = fc.oneof(
  fc.constantFrom([0x0c], [0x2c], [0x13], [0x16], [0x1e], [0x04], [0x1f, 0x0c], [0x1f, 0x80, 0x0c], [0x00]),
  fc.nat({ max: 255 }).map((t) => [t]),
);
/** Correct, non-minimal, indefinite, too short, too long, or absurd lengths. */
const lengthFor = (n: number) =>
  fc.oneof(
    { weight: 4, arbitrary: fc.constant([...derLength(n)]) },
    { weight: 1, arbitrary: fc.constant(n < 256 ? [0x81, n] : [...derLength(n)]) },
    { weight: 1, arbitrary: fc.constant([0x82, n >> 8, n & 0xff]) },
    { weight: 1, arbitrary: fc.constant([0x80]) },
    { weight: 1, arbitrary: fc.integer({ min: -2, max: 2 }).map((d) => [...derLength(Math.max(0, n + d))]) },
    {
      weight: 1,
      arbitrary: fc.constantFrom([0xff], [0x84, 0xff, 0xff, 0xff, 0xff], [0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    },
  );
/** Contents: UTF-8 text, invalid UTF-8 (lone surrogate encodings, overlongs, truncated), raw bytes. */
const contents = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 20 }).map((s) => [...Buffer.from(s, 'utf8')]),
  fc.constantFrom(
    [0xed, 0xa0, 0x80],
    [0xc0, 0xaf],
    [0xe2, 0x82],
    [0xf8, 0x88, 0x80, 0x80, 0x80],
    [0xef, 0xbb, 0xbf],
    [],
  ),
  fc.uint8Array({ maxLength: 24 }).map((b) => [...b]),
);
/** An extension value built like DER, with one or more parts wrong. */
export const derLikeValue: fc.Arbitrary<Uint8Array> = fc
  .tuple(tagBytes, contents, fc.uint8Array({ maxLength: 3 }), fc.boolean())
  .chain(([tag, body, trailing, addTrailing]) =>
    lengthFor(body.length).map(
      (len) => new Uint8Array([...tag, ...len, ...body, ...(addTrailing ? trailing : [])]),
    ),
  );

const extensionValue = fc.oneof(
  { weight: 3, arbitrary: derLikeValue },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }) },
);
const extensionList: fc.Arbitrary<RawExtension[]> = fc.array(
  fc.record({
    oid: fc.constantFrom(OID, OID, '1.3.6.1.4.1.57264.1.2', SAN),
    critical: fc.boolean(),
    value: extensionValue,
  }),
  { maxLength: 3 },
);

/** One byte flipped, inserted or removed, or the tail cut off: a certificate damaged anywhere. */
const mutatedCertificate = fc
  .tuple(
    extensionList,
    fc.array(
      fc.tuple(fc.constantFrom('flip', 'insert', 'delete', 'truncate'), fc.nat(), fc.nat({ max: 255 })),
      { minLength: 1, maxLength: 4 },
    ),
  )
  .map(([exts, edits]) => {
    const bytes = [...certificateDer(exts)];
    for (const [how, at, b] of edits) {
      const i = at % (bytes.length + 1);
      if (how === 'flip') bytes[i % bytes.length] = b;
      else if (how === 'insert') bytes.splice(i, 0, b);
      else if (how === 'delete') bytes.splice(i % bytes.length, 1);
      else bytes.length = i;
    }
    return new Uint8Array(bytes);
  });

/** Identities within the contract's cap of 256 UTF-8 bytes (docs/contract.md "Identity"). */
const identity = fc
  .string({ unit: 'grapheme', minLength: 1, maxLength: 64 })
  .filter((s) => Buffer.byteLength(s, 'utf8') <= 256);

export const identityExtensionTarget: FuzzTarget = {
  name: 'identity extension parser (core/identity-extension.ts)',
  fullRuns: FULL_RUNS,
  properties: [
    {
      name: 'arbitrary bytes as the certificate: a named failure, never a throw',
      property: fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const r = readPeerIdentity(bytes, OID);
        return isNamedResult(r) && !r.ok;
      }),
    },
    {
      name: 'a damaged certificate: a named failure or a well-formed identity, never a throw',
      property: fc.property(mutatedCertificate, (der) => isNamedResult(readPeerIdentity(der, OID))),
    },
    {
      name: 'arbitrary extension values: accepted only as the exact DER UTF8String of the identity',
      property: fc.property(extensionList, (exts) => {
        const r = readPeerIdentity(certificateDer(exts), OID);
        if (!isNamedResult(r)) return false;
        const first = exts.find((e) => e.oid === OID);
        // Only a known extension (here subjectAltName) is decoded against a schema of its own.
        if (!r.ok && r.reason === 'invalid_client_certificate') return exts.some((e) => e.oid === SAN);
        if (first === undefined) return !r.ok && r.reason === 'missing_identity_extension';
        if (!r.ok) return r.reason === 'invalid_identity_extension';
        const der = Buffer.from(encodeIdentityExtensionValue(r.peer.identity));
        return der.equals(first.value) && r.peer.spkiDer.equals(TEMPLATE_SPKI_DER);
      }),
    },
    {
      name: 'every well-formed identity round-trips through its UTF8String extension',
      property: fc.property(identity, (id) => {
        const value = new Uint8Array(encodeIdentityExtensionValue(id));
        const r = readPeerIdentity(certificateDer([{ oid: OID, value }]), OID);
        return r.ok && r.peer.identity === id && r.peer.spkiDer.equals(TEMPLATE_SPKI_DER);
      }),
    },
  ],
};
