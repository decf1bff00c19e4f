// Revocation must not fail open when the registry fails (issue #13 items 2 and 3), through the real gateway
// process and a real PostgreSQL, loopback only: a registry that stops, a change that fires no NOTIFY, and a
// LISTEN connection that dies without a FIN. In each case a revoked tunnel must still end within the stated
// bound (README "Revocation: the guarantee"). The CONNECT flood (item 1) is in
// revocation-under-attack-flood.test.ts.
import type { ClientHttp2Session } from 'node:http2';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { REGISTRY_CHANGE_CHANNEL } from '../../core/registry-queries.js';
import { createPrincipalKey } from '../../dev-support/pki.js';
import {
  createMigratedDatabase,
  dropDatabase,
  type PgHandle,
  startPostgres,
} from '../../dev-support/postgres.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  scrapeMetric,
} from '../support/gateway.js';
import { gateway, gatewaySuite, grantedTunnel } from '../support/revocation-gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

async function sql(url: string, text: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(text);
  } finally {
    await c.end();
  }
  return Date.now();
}

describe('registry unreachable: bounded grace (item 2)', () => {
  let cluster: PgHandle;
  let dbUrl: string;
  let gw: GatewayProcess;
  let echo: Upstream;
  const sessions: ClientHttp2Session[] = [];

  beforeAll(async () => {
    cluster = await startPostgres();
    dbUrl = await createMigratedDatabase(cluster.url, 'revocation_grace');
    echo = await startEchoServer();
    gw = await gateway(dbUrl, echo, {
      policy: { recheck_unavailable_grace_ms: 2000, revocation_recheck_interval_ms: 500 },
    });
  });

  afterAll(async () => {
    for (const s of sessions) await closeSession(s);
    await gw?.cleanup();
    await echo?.close();
    await cluster?.destroy();
  });

  it('ends a tunnel whose authorization cannot be confirmed for 2 s, and lets agents back in after', async () => {
    const alice = createPrincipalKey();
    const agent = await grantedTunnel(gw, dbUrl, alice, 'agent-alpha', sessions);
    await cluster.stop();
    const stopped = Date.now();
    await closed(agent.pump.stream, 8000).catch(() => undefined);
    expect(agent.pump.closedAt, 'tunnel still open 8 s after the registry stopped').toBeDefined();
    // Grace 2 s after the first failed re-check, which comes within one 500 ms poll of the stop.
    expect(agent.pump.closedAt! - stopped).toBeGreaterThanOrEqual(2000);
    expect(agent.pump.closedAt! - stopped).toBeLessThan(5000);
    const line = (await gw.waitForLogs('tunnel closed', (l) => l['source_identity'] === 'agent-alpha'))[0];
    expect(line).toMatchObject({ end_reason: 'registry_unavailable' });
    expect(String(line?.['end_detail'])).toMatch(/recheck_unavailable_grace_ms/);

    await cluster.start();
    const session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent.carrier });
    sessions.push(session);
    let status = 0;
    for (let i = 0; i < 40 && status !== 200; i++) {
      status = (await openTunnel(session, 'docstore:443')).status;
      if (status !== 200) await sleep(250);
    }
    expect(status).toBe(200);
  });
});

describe('a change that fires no notification (item 3)', () => {
  const suite = gatewaySuite('revocation_silent', {
    policy: { revocation_full_recheck_interval_ms: 3000, decision_cache_ttl_ms: 3000 },
  });

  it('ends a tunnel revoked with the triggers disabled within the full re-check interval + 2 s', async () => {
    const { gw, dbUrl, sessions } = suite;
    const alice = createPrincipalKey();
    const agent = await grantedTunnel(gw, dbUrl, alice, 'agent-alpha', sessions);
    expect(await scrapeMetric(gw.adminPort!, 'agent_gateway_registry_listener_up')).toBe(1);

    // Prove the revoke below really sends no notification.
    const listener = new pg.Client({ connectionString: dbUrl });
    await listener.connect();
    const heard: string[] = [];
    listener.on('notification', (m) => heard.push(m.payload ?? ''));
    await listener.query(`LISTEN ${REGISTRY_CHANGE_CHANNEL}`);
    try {
      await sql(dbUrl, 'ALTER TABLE permission_registry DISABLE TRIGGER USER');
      const committed = await sql(
        dbUrl,
        `UPDATE permission_registry SET revoked_at = now() WHERE permission_id = '${agent.permissionId}'`,
      );
      // ENABLE TRIGGER USER would bring them back as origin-only; they were ENABLE ALWAYS (migration 0005).
      await sql(
        dbUrl,
        `DO $$ DECLARE t text; BEGIN
           FOR t IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'permission_registry'::regclass AND NOT tgisinternal
           LOOP EXECUTE format('ALTER TABLE permission_registry ENABLE ALWAYS TRIGGER %I', t); END LOOP;
         END $$`,
      );
      await closed(agent.pump.stream, 6000).catch(() => undefined);
      expect(agent.pump.closedAt, 'revoked tunnel still open after interval + 2 s').toBeDefined();
      expect(agent.pump.closedAt! - committed).toBeLessThan(3000 + 2000);
      expect(heard).toEqual([]);
    } finally {
      await listener.end();
    }
    const line = (await gw.waitForLogs('tunnel closed', (l) => l['source_identity'] === 'agent-alpha'))[0];
    expect(line).toMatchObject({ end_reason: 'revoked', permission_id: agent.permissionId });
  });
});

/**
 * A TCP relay to PostgreSQL that can stop relaying without closing anything: the gateway's connections
 * stay established but nothing comes back, as when a peer vanishes without a FIN or RST.
 */
async function startBlackholeRelay(targetPort: number) {
  const pairs = new Set<[net.Socket, net.Socket]>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    sockets.add(client).add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    /** Every connection open now goes silent; new ones are relayed normally. */
    blackholeExisting() {
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
      }
      pairs.clear();
    },
    async close() {
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await done;
    },
  };
}

describe('a LISTEN connection that dies silently (item 3)', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let echo: Upstream;
  let relay: Awaited<ReturnType<typeof startBlackholeRelay>>;
  const sessions: ClientHttp2Session[] = [];

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'revocation_blackhole');
    echo = await startEchoServer();
    const direct = new URL(dbUrl);
    relay = await startBlackholeRelay(Number(direct.port));
    const relayed = new URL(dbUrl);
    relayed.host = `127.0.0.1:${relay.port}`;
    // The full re-check is off so only detecting the dead listener can end the tunnel in time.
    gw = await gateway(relayed.toString(), echo, {
      policy: { revocation_full_recheck_interval_ms: 0, revocation_recheck_interval_ms: 500 },
    });
  });

  afterAll(async () => {
    for (const s of sessions) await closeSession(s);
    await gw?.cleanup();
    await echo?.close();
    await relay?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('notices within a few seconds and re-checks, so a revoke sent meanwhile still ends the tunnel', async () => {
    const alice = createPrincipalKey();
    const agent = await grantedTunnel(gw, dbUrl, alice, 'agent-alpha', sessions);
    expect(await scrapeMetric(gw.adminPort!, 'agent_gateway_registry_listener_up')).toBe(1);
    relay.blackholeExisting();
    const silenced = Date.now();
    const committed = await sql(
      dbUrl,
      `UPDATE permission_registry SET revoked_at = now() WHERE permission_id = '${agent.permissionId}'`,
    );
    await closed(agent.pump.stream, 10_000).catch(() => undefined);
    expect(agent.pump.closedAt, 'revoked tunnel still open 10 s after a silent listener death').toBeDefined();
    const down = await gw.waitForLogs(
      'registry change listener down: re-checking tunnels by polling until it reconnects',
    );
    // Noticed within one heartbeat interval (2 s) plus its deadline (query_timeout_ms + 1 s), with slack.
    expect(Date.parse(String(down[0]?.['time'])) - silenced).toBeLessThan(5000);
    // Then the pooled re-check connections, silenced too, time out once (recheck_query_timeout_ms).
    expect(agent.pump.closedAt! - committed).toBeLessThan(9000);
    expect(String(down[0]?.['err'])).toMatch(/heartbeat|timeout/i);
  });
});
