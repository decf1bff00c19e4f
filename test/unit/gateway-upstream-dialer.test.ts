// The dialer resolves, applies the address guard to every resolved address, and connects only to a
// literal the guard approved. Only loopback is ever dialled here; denied addresses never get a SYN
// because resolve() refuses them before connect() exists for them.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { normalizeDestination } from '../../core/destination.js';
import { freePort } from '../../dev-support/ports.js';
import { AddressGuard, parseCidr } from '../../gateway/address-guard.js';
import { DEFAULT_DENY_CIDRS, type HostPort } from '../../gateway/config.js';
import { UpstreamDialer } from '../../gateway/upstream-dialer.js';

// Tests dial loopback listeners: allowed explicitly, as an operator would for a lab.
const guard = new AddressGuard(DEFAULT_DENY_CIDRS.map(parseCidr), [parseCidr('127.0.0.0/8')]);

function dialer(
  opts: {
    lookup?: (host: string) => Promise<readonly string[]>;
    overrides?: Record<string, HostPort>;
    recordDialled?: boolean;
  } = {},
) {
  const calls: string[] = [];
  const d = new UpstreamDialer({
    guard,
    overrides: new Map(Object.entries(opts.overrides ?? {})),
    connectTimeoutMs: 2000,
    recordDialled: opts.recordDialled,
    lookup: async (host) => {
      calls.push(host);
      if (opts.lookup === undefined) throw new Error(`unexpected lookup of ${host}`);
      return opts.lookup(host);
    },
  });
  return { d, calls };
}

describe('UpstreamDialer.resolve', () => {
  it('refuses a name that resolves only to the metadata address', async () => {
    const { d, calls } = dialer({ lookup: async () => ['169.254.169.254'] });
    const r = await d.resolve(normalizeDestination('metadata.internal:80'));
    expect(r).toMatchObject({ ok: false, reason: 'destination_address_denied' });
    // Absolute: the resolver's search domains never apply.
    expect(calls).toEqual(['metadata.internal.']);
  });

  it('refuses IP-literal metadata and link-local destinations without a lookup', async () => {
    const { d, calls } = dialer();
    for (const dest of [
      '169.254.169.254:80',
      '[fe80::1]:443',
      '0.0.0.0:443',
      '[::ffff:169.254.169.254]:80',
    ]) {
      expect(await d.resolve(normalizeDestination(dest)), dest).toMatchObject({
        ok: false,
        reason: 'destination_address_denied',
      });
    }
    expect(calls).toEqual([]);
  });

  it('refuses an override that points at a denied address, by literal or by name', async () => {
    const { d } = dialer({
      lookup: async () => ['169.254.169.254'],
      overrides: {
        'meta.test:80': { host: '169.254.169.254', port: 80 },
        'alias.test:80': { host: 'evil.test', port: 80 },
      },
    });
    expect(await d.resolve(normalizeDestination('meta.test:80'))).toMatchObject({
      reason: 'destination_address_denied',
    });
    expect(await d.resolve(normalizeDestination('alias.test:80'))).toMatchObject({
      reason: 'destination_address_denied',
    });
  });

  it('keeps only the permitted addresses of a mixed answer, in resolver order', async () => {
    const { d } = dialer({ lookup: async () => ['169.254.169.254', '127.0.0.2', 'fe80::1', '127.0.0.1'] });
    const r = await d.resolve(normalizeDestination('mixed.test:443'));
    expect(r).toMatchObject({
      ok: true,
      addresses: ['127.0.0.2', '127.0.0.1'],
      target: { host: 'mixed.test', port: 443 },
    });
  });

  it('applies overrides (curl --resolve style) before resolving, looking up their names as absolute', async () => {
    const { d, calls } = dialer({
      lookup: async () => ['127.0.0.1'],
      overrides: { 'docstore:443': { host: 'docstore.internal', port: 9443 } },
    });
    const r = await d.resolve(normalizeDestination('docstore'));
    expect(r).toMatchObject({
      ok: true,
      target: { host: 'docstore.internal', port: 9443 },
      addresses: ['127.0.0.1'],
    });
    expect(calls).toEqual(['docstore.internal.']);
  });

  it('takes localhost and *.localhost as loopback without a lookup (RFC 6761)', async () => {
    const { d, calls } = dialer({ overrides: { 'docstore:443': { host: 'localhost', port: 9443 } } });
    expect(await d.resolve(normalizeDestination('docstore'))).toMatchObject({
      ok: true,
      target: { host: 'localhost', port: 9443 },
      addresses: ['127.0.0.1'],
    });
    // The guard still applies: only 127.0.0.0/8 is allowed here, so ::1 is dropped.
    expect(await d.resolve(normalizeDestination('app.localhost:80'))).toMatchObject({
      ok: true,
      addresses: ['127.0.0.1'],
    });
    expect(calls).toEqual([]);
  });

  it('names the absolute name it looked up when resolution fails', async () => {
    const { d } = dialer({
      lookup: async () => {
        throw Object.assign(new Error('getaddrinfo ENOTFOUND'), { code: 'ENOTFOUND' });
      },
    });
    expect(await d.resolve(normalizeDestination('api.example.com'))).toMatchObject({
      ok: false,
      reason: 'dns',
      detail: expect.stringContaining('cannot resolve api.example.com.:'),
    });
  });

  it('reports resolver failures as dns', async () => {
    const { d } = dialer({
      lookup: async () => {
        throw Object.assign(new Error('getaddrinfo ENOTFOUND nowhere.test'), { code: 'ENOTFOUND' });
      },
    });
    expect(await d.resolve(normalizeDestination('nowhere.test'))).toMatchObject({ ok: false, reason: 'dns' });
    const empty = dialer({ lookup: async () => [] });
    expect(await empty.d.resolve(normalizeDestination('empty.test'))).toMatchObject({
      ok: false,
      reason: 'dns',
    });
  });
});

describe('UpstreamDialer.connect', () => {
  let server: net.Server;
  let port: number;
  beforeAll(async () => {
    server = net.createServer((s) => s.end());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it.each([true, false])(
    'connects to the approved literal and falls through refused addresses (dialled list kept: %s)',
    async (recordDialled) => {
      const { d } = dialer({
        lookup: async () => ['127.0.0.2', '127.0.0.1'],
        overrides: { 'svc.test:443': { host: 'svc.local', port } },
        recordDialled,
      });
      const r = await d.resolve(normalizeDestination('svc.test'));
      if (!r.ok) throw new Error(r.detail);
      const c = await d.connect(r);
      expect(c.ok).toBe(true);
      if (c.ok) {
        expect(c.address).toBe('127.0.0.1');
        expect(c.socket.remoteAddress).toBe('127.0.0.1');
        expect(c.socket.remotePort).toBe(port);
        // Only receipts read it: with them off it is never built.
        expect(c.dialled).toEqual(recordDialled ? [`127.0.0.2:${port}`, `127.0.0.1:${port}`] : []);
        c.socket.destroy();
      }
    },
  );

  it('reports refused when nothing listens', async () => {
    const closedPort = await freePort();
    const { d } = dialer();
    const r = await d.resolve(normalizeDestination(`127.0.0.1:${closedPort}`));
    if (!r.ok) throw new Error(r.detail);
    expect(await d.connect(r)).toMatchObject({ ok: false, reason: 'refused' });
  });

  it('stops when the client goes away', async () => {
    const { d } = dialer();
    const r = await d.resolve(normalizeDestination(`127.0.0.1:${port}`));
    if (!r.ok) throw new Error(r.detail);
    const abort = new AbortController();
    abort.abort();
    expect(await d.connect(r, abort.signal)).toMatchObject({ ok: false, reason: 'cancelled' });
  });
});
