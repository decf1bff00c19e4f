/**
 * Properties of the authority normalizer (core/destination.ts, rules in docs/contract.md): it throws only
 * InvalidDestinationError, it is idempotent, its output is its own canonical spelling, and spellings the
 * contract calls equivalent (case, leading port zeros, surrounding whitespace, default port) agree.
 */
import * as fc from 'fast-check';
import { type Destination, InvalidDestinationError, normalizeDestination } from '../../core/destination.js';
import { FULL_RUNS, type FuzzTarget, onlyThrows } from './fuzz-target.js';

const normalize = (input: string) => onlyThrows(() => normalizeDestination(input), InvalidDestinationError);

/** Characters that change meaning under IDNA, WHATWG host parsing or DNS: the interesting part of a label. */
const TRICKY_CHARS = [
  'ß', // deviation character: stays ß (xn--zca) under non-transitional UTS 46
  'ü',
  'İ', // lowercases to two code points
  'K', // Kelvin sign: maps to k
  'ﬁ', // ligature: maps to "fi"
  'Ａ', // fullwidth letter
  '１', // fullwidth digit: can turn a name into an IPv4 address
  '٣', // Arabic-Indic digit
  '。', // ideographic full stop: a label separator under IDNA
  '．', // fullwidth full stop
  '\u00ad', // soft hyphen: mapped to nothing
  '\u200d', // zero-width joiner
  '\u200b', // zero-width space
  '\ufeff',
  '\u0301', // combining mark
  '\u202e', // bidi override
  '\ud800', // lone surrogate
  '💩',
  'xn--',
  '-',
  '_',
  '.',
  '%',
  '%2e',
  '%00',
  '@',
  '/',
  '\\',
  '#',
  '?',
  '*',
  '[',
  ']',
  ':',
  ' ',
  '\t',
  '\n',
  '\u0000',
  '\u00a0',
  '\u3000',
];

const asciiLabelChar = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_');
const label = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: asciiLabelChar, minLength: 1, maxLength: 12 }) },
  {
    weight: 2,
    arbitrary: fc
      .array(fc.oneof(asciiLabelChar, fc.constantFrom(...TRICKY_CHARS)), { minLength: 1, maxLength: 8 })
      .map((a) => a.join('')),
  },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 6 }) },
  { weight: 1, arbitrary: fc.integer({ min: 60, max: 70 }).map((n) => 'a'.repeat(n)) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      'xn--zca',
      'xn--a',
      'xn--',
      'xn--ls8h',
      'XN--BCHER-KVA',
      'xn--80ak6aa92e',
      '0x7f',
      '0x',
      '08',
      '1e3',
    ),
  },
);
const dnsName = fc.array(label, { minLength: 1, maxLength: 6 }).map((labels) => labels.join('.'));
const longName = fc
  .integer({ min: 240, max: 270 })
  .map((n) => `${'abcdefghi.'.repeat(Math.ceil(n / 10))}`.slice(0, n).replace(/\.$/, 'x'));

const octet = fc.integer({ min: 0, max: 255 });
const octetSpelling = fc.oneof(
  octet.map(String),
  octet.map((n) => `0${n.toString(8)}`),
  octet.map((n) => `0x${n.toString(16)}`),
  octet.map((n) => `00${n}`),
  fc.integer({ min: 256, max: 99_999 }).map(String),
);
const ipv4 = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(octet, octet, octet, octet).map((o) => o.join('.')) },
  { weight: 2, arbitrary: fc.array(octetSpelling, { minLength: 1, maxLength: 5 }).map((o) => o.join('.')) },
  { weight: 1, arbitrary: fc.nat({ max: 2 ** 32 + 5 }).map(String) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(octet, octet, octet, octet)
      .map((o) =>
        o.map((n) => String(n).replace(/\d/g, (d) => String.fromCharCode(0xff10 + Number(d)))).join('.'),
      ),
  },
);

const group = fc.oneof(
  fc.nat({ max: 0xffff }).map((n) => n.toString(16)),
  fc.constantFrom('0', '0000', 'FFFF', 'AbCd', '00000', 'g'),
);
const ipv6Literal = fc.oneof(
  { weight: 2, arbitrary: fc.array(group, { minLength: 8, maxLength: 8 }).map((g) => g.join(':')) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.array(group, { maxLength: 7 }), fc.array(group, { maxLength: 7 }))
      .map(([a, b]) => `${a.join(':')}::${b.join(':')}`),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.constantFrom('::ffff:', '::', '64:ff9b::', '::ffff:0:', '2002::', '1:2:3:4:5:6:'), ipv4)
      .map(([p, v4]) => `${p}${v4}`),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.array(group, { minLength: 1, maxLength: 8 }), fc.constantFrom('%eth0', '%25eth0', '%1', '%'))
      .map(([g, z]) => `${g.join(':')}${z}`),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '::',
      '::1',
      ':::',
      '1::2::3',
      '[::1]',
      'fe80::1%lo',
      '::FFFF:127.0.0.1',
      '0:0:0:0:0:0:0:1',
    ),
  },
);

const port = fc.oneof(
  { weight: 3, arbitrary: fc.constant('') },
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 65_535 }).map((p) => `:${p}`) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 700_000 }).map((p) => `:${p}`) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 65_535 }))
      .map(([z, p]) => `:${'0'.repeat(z)}${p}`),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      ':',
      ':+443',
      ':-1',
      ': 443',
      ':443 ',
      ':0x1bb',
      ':４４３',
      ':443:443',
      ':1e3',
      '::443',
    ),
  },
);

const host = fc.oneof(
  { weight: 4, arbitrary: dnsName },
  { weight: 1, arbitrary: longName },
  { weight: 3, arbitrary: ipv4 },
  { weight: 2, arbitrary: ipv6Literal.map((v6) => `[${v6}]`) },
  { weight: 1, arbitrary: ipv6Literal },
);

const space = fc.constantFrom('', '', '', ' ', '\t', '\n', '\u00a0', '\u3000', '\ufeff', '\r\n');
/** Decorations an attacker or a sloppy admin adds to an otherwise fine authority. */
const decorate = (text: string) =>
  fc
    .tuple(
      space,
      space,
      fc.constantFrom('none', 'none', 'none', 'none', 'trailing-dot', 'upper', 'flip-case', 'percent'),
      fc.nat(),
    )
    .map(([before, after, how, at]) => {
      let t = text;
      if (how === 'trailing-dot') t = t.replace(/(:\d*)?$/, (p) => `.${p}`);
      else if (how === 'upper') t = t.toUpperCase();
      else if (how === 'flip-case')
        t = [...t].map((c, i) => ((i + at) % 2 === 0 ? c.toUpperCase() : c.toLowerCase())).join('');
      else if (how === 'percent' && t.length > 0) {
        const i = at % t.length;
        t = `${t.slice(0, i)}%${(t.charCodeAt(i) & 0xff).toString(16).padStart(2, '0')}${t.slice(i + 1)}`;
      }
      return `${before}${t}${after}`;
    });

/** Structured authorities, decorated, plus wholly arbitrary strings. */
export const authority: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(host, port).chain(([h, p]) => decorate(`${h}${p}`)) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme-composite', maxLength: 20 }) },
  { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom(...'[]:.%0123456789abcdefx'), maxLength: 30 }) },
);

function sameDestination(a: Destination, b: Destination): boolean {
  return a.normalized === b.normalized && a.host === b.host && a.port === b.port && a.kind === b.kind;
}

/** What the normalized form must look like, per kind (docs/contract.md "Destinations"). */
function isCanonicalShape(d: Destination): boolean {
  const hostText = d.kind === 'ipv6' ? `[${d.host}]` : d.host;
  if (d.normalized !== `${hostText}:${d.port}`) return false;
  if (!Number.isInteger(d.port) || d.port < 1 || d.port > 65_535) return false;
  if (d.kind === 'dns') return d.host.length <= 253 && /^[a-z0-9_.-]+$/.test(d.host);
  if (d.kind === 'ipv4') return /^\d{1,3}(\.\d{1,3}){3}$/.test(d.host);
  return /^[0-9a-f:.]+$/.test(d.host);
}

export const destinationTarget: FuzzTarget = {
  name: 'authority normalizer (core/destination.ts)',
  fullRuns: FULL_RUNS,
  properties: [
    {
      name: 'throws only InvalidDestinationError, and its message names the input',
      property: fc.property(authority, (input) => {
        const r = normalize(input);
        if ('error' in r) return r.error.message.includes(JSON.stringify(input));
        return true;
      }),
    },
    {
      name: 'is idempotent: normalize(normalize(x).normalized) equals normalize(x)',
      property: fc.property(authority, (input) => {
        const r = normalize(input);
        if ('error' in r) return true;
        const again = normalize(r.value.normalized);
        return 'value' in again && sameDestination(again.value, r.value);
      }),
    },
    {
      name: 'the normalized form round-trips: "host:port" (IPv6 bracketed), lowercase ASCII, port 1..65535',
      property: fc.property(authority, (input) => {
        const r = normalize(input);
        return 'error' in r || isCanonicalShape(r.value);
      }),
    },
    {
      name: 'equivalent spellings agree: case, surrounding whitespace, leading port zeros, default port',
      property: fc.property(authority, space, fc.integer({ min: 0, max: 4 }), (input, pad, zeros) => {
        const r = normalize(input);
        if ('error' in r) return true;
        const d = r.value;
        const hostText = d.kind === 'ipv6' ? `[${d.host}]` : d.host;
        const spellings = [
          d.normalized.toUpperCase(),
          `${pad}${d.normalized}${pad}`,
          ...(String(d.port).length + zeros <= 5 ? [`${hostText}:${'0'.repeat(zeros)}${d.port}`] : []),
          ...(d.port === 443 ? [hostText] : []),
        ];
        return spellings.every((s) => {
          const other = normalize(s);
          return 'value' in other && sameDestination(other.value, d);
        });
      }),
    },
  ],
};
