// Dialing exactly what was granted (issue #13 item 7), through the real gateway process:
// - a granted name is looked up as the absolute name, so a resolver search domain cannot answer for it:
//   the gateway runs with its own /etc/resolv.conf (private mount namespace, test/support/dns-namespace.ts)
//   whose search domain corp.internal, with ndots:5, is served by a DNS responder in this test that
//   answers api.example.com.corp.internal with the test destination and NXDOMAIN for api.example.com;
// - IPv6 literals that embed an IPv4 address are refused by default, even when that IPv4 address is in
//   allow_cidrs; an IPv4-mapped address is judged as the IPv4 address it is.
// Only loopback addresses are dialled, and the machine's /etc/resolv.conf is never touched.
import { randomInt } from 'node:crypto';
import type { ClientHttp2Session } from 'node:http2';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { normalizeDestination } from '../../core/destination.js';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { type ResolvConfNamespace, resolvConfNamespace } from '../support/dns-namespace.js';
import { type DnsResponder, startDnsResponder } from '../support/dns-responder.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  roundTrip,
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

// A loopback address of its own for the responder (resolv.conf cannot name a port, so it is port 53).
const NAMESERVER = `127.${randomInt(1, 255)}.${randomInt(1, 255)}.53`;
const SEARCH_DOMAIN = 'corp.internal';

describe('dialing exactly what was granted', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let agent: Carrier;
  let echo: Upstream;
  let dns: DnsResponder;
  let namespace: ResolvConfNamespace | { readonly unavailable: string };
  let session: ClientHttp2Session;
  const dest = (host: string) => `${host}:${echo.port}`;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'gateway_dialing');
    echo = await startEchoServer();
    dns = await startDnsResponder(NAMESERVER, {
      [`api.example.com.${SEARCH_DOMAIN}`]: ['127.0.0.1'],
      'real.example.com': ['127.0.0.1'],
    });
    namespace = await resolvConfNamespace(
      `nameserver ${NAMESERVER}\nsearch ${SEARCH_DOMAIN}\noptions ndots:5 timeout:1 attempts:1\n`,
    );
    agent = await createCarrier('agent-dial');
    const principal = createPrincipalKey();
    const destinations = [
      dest('api.example.com'),
      dest('real.example.com'),
      'alias.test:443',
      ...['[::ffff:7f00:1]', '[::ffff:7f00:2]', '[::7f00:1]', '[::ffff:0:7f00:1]', '[2002:7f00:1::]'].map(
        dest,
      ),
    ];
    for (const destination of destinations) {
      await grant(dbUrl, {
        principalId: 'org-alice',
        principal,
        identity: agent.identity,
        subjectSpkiDer: agent.spkiDer,
        destination: normalizeDestination(destination).normalized,
      });
    }
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      ...('launcher' in namespace ? { launcher: namespace.launcher } : {}),
      config: {
        upstream: {
          connect_timeout_ms: 3000,
          // Only the test destination's own address: the embedded forms below must not ride on it.
          allow_cidrs: ['127.0.0.1/32'],
          overrides: { 'alias.test:443': dest('api.example.com') },
        },
      },
    });
    session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
  });

  afterAll(async () => {
    if (session) await closeSession(session);
    await gw?.cleanup();
    await Promise.all([echo?.close(), dns?.close()]);
    if (namespace !== undefined && 'cleanup' in namespace) await namespace.cleanup();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  async function expectTunnel(authority: string): Promise<void> {
    const t = await openTunnel(session, authority);
    expect(t.status, `${authority}: ${String(t.headers['agent-gateway-deny-reason'])}`).toBe(200);
    expect((await roundTrip(t.stream, Buffer.from('ping'))).toString()).toBe('ping');
    t.stream.end();
    await closed(t.stream);
  }

  describe('names are looked up as absolute names: no search domain answers for a grant', () => {
    const skipReason = () => ('unavailable' in namespace ? namespace.unavailable : undefined);

    it('dials a granted name its DNS answers for (the resolver set-up works)', async (ctx) => {
      const why = skipReason();
      if (why !== undefined) ctx.skip(why);
      await expectTunnel(dest('real.example.com'));
      expect(dns.questions.map((q) => q.name)).toContain('real.example.com');
    });

    it('answers 502 dns for api.example.com although api.example.com.corp.internal resolves', async (ctx) => {
      const why = skipReason();
      if (why !== undefined) ctx.skip(why);
      const asked = dns.questions.length;
      const reached = echo.accepted();
      const t = await openTunnel(session, dest('api.example.com'));
      expect(t.status).toBe(502);
      const line = await gw.waitForLogs(
        'upstream connect failed',
        (l) => l['dest_authority'] === dest('api.example.com'),
      );
      expect(line[0]).toMatchObject({ dial_error: 'dns' });
      expect(String(line[0]?.['detail'])).toContain('cannot resolve api.example.com.');
      const names = dns.questions.slice(asked).map((q) => q.name);
      expect(names).toContain('api.example.com');
      expect(names.filter((n) => n.endsWith(SEARCH_DOMAIN))).toEqual([]);
      expect(echo.accepted(), 'the destination was never reached').toBe(reached);
    });

    it('looks up a name in [upstream] overrides as absolute too', async (ctx) => {
      const why = skipReason();
      if (why !== undefined) ctx.skip(why);
      const asked = dns.questions.length;
      const t = await openTunnel(session, 'alias.test:443');
      expect(t.status).toBe(502);
      const line = await gw.waitForLogs(
        'upstream connect failed',
        (l) => l['dest_authority'] === 'alias.test:443',
      );
      expect(line[0]).toMatchObject({ dial_error: 'dns' });
      expect(dns.questions.slice(asked).filter((q) => q.name.endsWith(SEARCH_DOMAIN))).toEqual([]);
    });
  });

  describe('IPv6 forms that embed an IPv4 address', () => {
    it.each([
      ['[::7f00:1]', 'IPv4-compatible ::127.0.0.1'],
      ['[::127.0.0.1]', 'IPv4-compatible, dotted spelling'],
      ['[::ffff:0:7f00:1]', 'IPv4-translated ::ffff:0:127.0.0.1'],
      ['[2002:7f00:1::]', '6to4 of 127.0.0.1'],
    ])(
      'refuses %s (%s) with 403 destination_address_denied, although 127.0.0.1/32 is allowed',
      async (host) => {
        const authority = dest(host);
        const t = await openTunnel(session, authority);
        expect(t.status, authority).toBe(403);
        expect(t.headers['agent-gateway-deny-reason']).toBe('destination_address_denied');
        // dest_authority is the authority as the client sent it.
        const line = await gw.waitForLogs('CONNECT denied', (l) => l['dest_authority'] === authority);
        expect(line[0]).toMatchObject({ deny_reason: 'destination_address_denied' });
        // Refused before any dial: no connect attempt was logged for it.
        expect(gw.logs('upstream connect failed').filter((l) => l['dest_authority'] === authority)).toEqual(
          [],
        );
      },
    );

    it('judges an IPv4-mapped address as the IPv4 address it is: allowed 127.0.0.1, denied 127.0.0.2', async () => {
      await expectTunnel(dest('[::ffff:7f00:1]'));
      const t = await openTunnel(session, dest('[::ffff:7f00:2]'));
      expect(t.status).toBe(403);
      expect(t.headers['agent-gateway-deny-reason']).toBe('destination_address_denied');
    });
  });
});
