// core/host-port.ts: the one host:port parser behind the gateway's config, the sidecar's flags and the
// demo services. Callers word the errors; these tests pin what each spelling parses to.
import { describe, expect, it } from 'vitest';
import { formatHostPort, parseHostPort } from '../../core/host-port.js';

describe('parseHostPort', () => {
  it('parses names, IPv4 and bracketed IPv6, ignoring surrounding whitespace', () => {
    expect(parseHostPort('gateway.internal:8443')).toEqual({
      ok: true,
      value: { host: 'gateway.internal', port: 8443 },
    });
    expect(parseHostPort(' 127.0.0.1:1 ')).toEqual({ ok: true, value: { host: '127.0.0.1', port: 1 } });
    expect(parseHostPort('[::1]:65535')).toEqual({ ok: true, value: { host: '::1', port: 65535 } });
    expect(parseHostPort('[::ffff:127.0.0.1]:80')).toEqual({
      ok: true,
      value: { host: '::ffff:127.0.0.1', port: 80 },
    });
  });

  it('refuses what is not host:port', () => {
    for (const text of [
      '',
      'host',
      ':443',
      'host:',
      '::1:443',
      'a b:1',
      'a/b:1',
      'host:123456',
      'host:-1',
      '[::1]',
    ]) {
      expect(parseHostPort(text), text).toEqual({ ok: false, problem: 'syntax' });
    }
  });

  it('refuses brackets around something that is not IPv6', () => {
    expect(parseHostPort('[1:2:3]:443')).toEqual({ ok: false, problem: 'not_ipv6', host: '1:2:3' });
    expect(parseHostPort('[127.0.0.1]:443')).toEqual({ ok: false, problem: 'not_ipv6', host: '127.0.0.1' });
  });

  it('takes port 1..65535, and 0 only when asked', () => {
    expect(parseHostPort('h:0')).toEqual({ ok: false, problem: 'port_range', port: 0, min: 1 });
    expect(parseHostPort('h:65536')).toEqual({ ok: false, problem: 'port_range', port: 65536, min: 1 });
    expect(parseHostPort('h:0', { allowPortZero: true })).toEqual({
      ok: true,
      value: { host: 'h', port: 0 },
    });
    expect(parseHostPort('h:65536', { allowPortZero: true })).toEqual({
      ok: false,
      problem: 'port_range',
      port: 65536,
      min: 0,
    });
  });
});

describe('formatHostPort', () => {
  it('brackets IPv6 only, and parses back to the same address', () => {
    expect(formatHostPort('::1', 8443)).toBe('[::1]:8443');
    expect(formatHostPort('127.0.0.1', 8443)).toBe('127.0.0.1:8443');
    expect(formatHostPort('gateway.internal', 1)).toBe('gateway.internal:1');
    for (const [host, port] of [
      ['::1', 1],
      ['10.0.0.1', 443],
      ['example.com', 65535],
    ] as const) {
      expect(parseHostPort(formatHostPort(host, port))).toEqual({ ok: true, value: { host, port } });
    }
  });
});
