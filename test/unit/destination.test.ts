// docs/contract.md "Destination normalization": one normalizer for gateway, CLI and tests. Each row is input
// → canonical form, or null when the input must be refused (the reason fragment is checked so a refusal for
// the wrong cause fails).
import { describe, expect, it } from 'vitest';
import {
  InvalidDestinationError,
  normalizeDestination,
  tryNormalizeDestination,
} from '../../core/destination.js';

type Row = readonly [input: string, expected: string | { refused: RegExp }];

const refused = (why: RegExp) => ({ refused: why });

const TABLE: readonly Row[] = [
  // host names: case, default port, explicit port, whitespace
  ['api.example.com', 'api.example.com:443'],
  ['API.Example.COM', 'api.example.com:443'],
  ['api.example.com:8443', 'api.example.com:8443'],
  ['  api.example.com:80  ', 'api.example.com:80'],
  ['localhost', 'localhost:443'],
  ['foo_bar.example', 'foo_bar.example:443'],
  // ports
  ['api.example.com:0443', 'api.example.com:443'],
  ['api.example.com:00080', 'api.example.com:80'],
  ['api.example.com:1', 'api.example.com:1'],
  ['api.example.com:65535', 'api.example.com:65535'],
  ['api.example.com:0', refused(/outside 1\.\.65535/)],
  ['api.example.com:65536', refused(/outside 1\.\.65535/)],
  ['api.example.com:123456', refused(/not a number/)],
  ['api.example.com:', refused(/not a number/)],
  ['api.example.com:https', refused(/not a number/)],
  ['api.example.com:-1', refused(/not a number/)],
  ['api.example.com:+443', refused(/not a number/)],
  // empty host / empty input
  ['', refused(/: empty$/)],
  ['   ', refused(/: empty$/)],
  [':443', refused(/empty host/)],
  // trailing dot refused, not stripped
  ['api.example.com.', refused(/trailing dot/)],
  ['api.example.com.:443', refused(/trailing dot/)],
  // IDNA → A-labels
  ['bücher.example', 'xn--bcher-kva.example:443'],
  ['BÜCHER.example:8443', 'xn--bcher-kva.example:8443'],
  ['xn--bcher-kva.example', 'xn--bcher-kva.example:443'],
  // IPv4: strict dotted quad only
  ['127.0.0.1', '127.0.0.1:443'],
  ['127.0.0.1:8080', '127.0.0.1:8080'],
  ['127.1', refused(/strict dotted-quad/)],
  ['0x7f.0.0.1', refused(/strict dotted-quad/)],
  ['010.0.0.1', refused(/strict dotted-quad/)],
  ['2130706433', refused(/strict dotted-quad/)],
  ['1.2.3.4.5', refused(/strict dotted-quad/)],
  ['250.251.252.255', '250.251.252.255:443'],
  ['201.224.249.200', '201.224.249.200:443'],
  ['10.20.30.40', '10.20.30.40:443'],
  // a numeric (or 0x) last label reads as IPv4 to the WHATWG parser; a numeric first label does not
  ['foo.123', refused(/strict dotted-quad/)],
  ['foo.0x', refused(/strict dotted-quad/)],
  ['foo.0x1f', refused(/strict dotted-quad/)],
  ['1password.com', '1password.com:443'],
  // full-width digits become an IPv4 address only after IDNA mapping
  ['\uff11\uff12\uff17.\uff10.\uff10.\uff11', refused(/strict dotted-quad/)],
  ['\ufffd.example', refused(/not a valid host name/)],
  // IPv6: RFC 5952 compression, brackets, default port, zone ids refused
  ['[::1]', '[::1]:443'],
  ['[::1]:8443', '[::1]:8443'],
  ['[0:0::1]', '[::1]:443'],
  ['[0:0:0:0:0:0:0:1]:443', '[::1]:443'],
  ['::1', '[::1]:443'],
  ['0:0::1', '[::1]:443'],
  ['[2001:DB8:0:0:0:0:0:1]:443', '[2001:db8::1]:443'],
  ['2001:db8::1', '[2001:db8::1]:443'],
  ['[2001:db8:0:0:1:0:0:1]', '[2001:db8::1:0:0:1]:443'],
  ['[::ffff:192.0.2.1]', '[::ffff:c000:201]:443'],
  ['[fe80::1%eth0]:443', refused(/zone ids/)],
  ['fe80::1%eth0', refused(/zone ids/)],
  ['[fe80::1%25eth0]', refused(/zone ids/)],
  ['[::1]:0', refused(/outside 1\.\.65535/)],
  ['[::1]:0443', '[::1]:443'],
  ['[::1', refused(/unterminated/)],
  ['[::1]x', refused(/after "\]"/)],
  ['[example.com]:443', refused(/not an IPv6/)],
  ['1:2:3:4:5:6:7:8:9', refused(/not an IPv6/)],
  // junk
  ['http://api.example.com', refused(/.+/)],
  ['api.example.com/path', refused(/forbidden character/)],
  ['user@api.example.com', refused(/forbidden character/)],
  ['a b.example', refused(/forbidden character/)],
  ['-bad.example', refused(/invalid host label/)],
  ['bad-.example', refused(/invalid host label/)],
  ['a..b', refused(/.+/)],
  [`${'a'.repeat(64)}.example`, refused(/.+/)],
  [`${'a.'.repeat(125)}com`, `${'a.'.repeat(125)}com:443`], // 253 characters, the longest
  [`${'a.'.repeat(127)}com`, refused(/too long/)],
];

describe('normalizeDestination (docs/contract.md)', () => {
  it.each(TABLE)('%j', (input, expected) => {
    if (typeof expected === 'string') {
      expect(normalizeDestination(input).normalized).toBe(expected);
      // Idempotent: the canonical form normalizes to itself.
      expect(normalizeDestination(expected).normalized).toBe(expected);
    } else {
      let error: unknown;
      try {
        normalizeDestination(input);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(InvalidDestinationError);
      expect((error as Error).name).toBe('InvalidDestinationError');
      expect((error as Error).message).toMatch(expected.refused);
      expect(tryNormalizeDestination(input)).toBeUndefined();
    }
  });

  it('tryNormalizeDestination returns the destination, and throws what is not a refusal', () => {
    expect(tryNormalizeDestination(' API.example.com:80 ')).toEqual(
      normalizeDestination('api.example.com:80'),
    );
    expect(() => tryNormalizeDestination(undefined as unknown as string)).toThrow(TypeError);
  });

  it('reports the dialable host and kind', () => {
    expect(normalizeDestination('[0:0::1]:8443')).toEqual({
      normalized: '[::1]:8443',
      host: '::1',
      port: 8443,
      kind: 'ipv6',
    });
    expect(normalizeDestination('10.1.2.3')).toMatchObject({ host: '10.1.2.3', port: 443, kind: 'ipv4' });
    expect(normalizeDestination('Bücher.Example:80')).toMatchObject({
      host: 'xn--bcher-kva.example',
      port: 80,
      kind: 'dns',
    });
  });
});
