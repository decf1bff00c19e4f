// Revocation must not fail open (issue #13 items 1-3), through the real gateway process and a real
// PostgreSQL, loopback only: a CONNECT flood from clients with random identities, a registry that stops,
// a change that fires no NOTIFY, and a LISTEN connection that dies without a FIN. In each case a revoked
// tunnel must still end within the stated bound (README "Revocation: the guarantee").
import { randomUUID } from 'node:crypto';
import type { ClientHttp2Session } from 'node:http2';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { REGISTRY_CHANGE_CHANNEL } from '../../core/registry-queries.js';
import { type Carrier, createCarrier, createPrincipalKey, type PrincipalKey } from '../../dev-support/pki.js';
import {
  createMigratedDatabase,
  dropDatabase,
  type PgHandle,
  startPostgres,
} from '../../dev-support/postgres.js';
import { grant, revokePermission } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  scrapeMetric,
  startGatewayProcess,
} from '../support/gateway.js';
import { Pump } from '../support/pump.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

type Toml = Record<string, Record<string, unknown>>;

/** A gateway on `dbUrl` with docstore:443 → the echo server, plus `extra` config sections. */
function gateway(dbUrl: string, echo: Upstream, extra: Toml = {}): Promise<GatewayProcess> {
  return startGatewayProcess({
    databaseUrl: dbUrl,
    config: {
      ...extra,
      upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
    },
  });
}

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

/** An agent with a grant for docstore:443 and one tunnel pumping bytes through it. */
async function grantedTunnel(
  gw: GatewayProcess,
  dbUrl: string,
  principal: PrincipalKey,
  identity: string,
  sessions: ClientHttp2Session[],
): Promise<{ carrier: Carrier; permissionId: string; pump: Pump }> {
  const carrier = await createCarrier(identity);
  const permissionId = await grant(dbUrl, {
    principalId: 'org-alice',
    principal,
    identity,
    subjectSpkiDer: carrier.spkiDer,
    destination: 'docstore:443',
  });
  const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
  sessions.push(session);
  const t = await openTunnel(session, 'docstore:443');
  expect(t.status, String(t.headers['agent-gateway-deny-reason'])).toBe(200);
  const pump = new Pump(t.stream);
  expect(await pump.flowing()).toBe(true);
  return { carrier, permissionId, pump };
}

/**
 * The flooding client, in its own thread so that its event loop is not the test's. Its connections come
 * from 127.0.0.2 (the legitimate agents from 127.0.0.1), each keeps `inFlight` CONNECTs to random
 * loopback ports outstanding (as many as the gateway lets it), and reconnects whenever the gateway
 * closes it, until told to stop (or `maxRequests` in all).
 */
const FLOOD_WORKER = `
const http2 = require('node:http2');
const tls = require('node:tls');
const { parentPort, workerData } = require('node:worker_threads');
const { port, caPem, carriers, inFlight, maxRequests } = workerData;
let stopped = false;
let sent = 0;
let connections = 0;
const statuses = {};
const sessions = new Set();
const one = (s) => {
  if (stopped || s.destroyed || s.closed || sent >= maxRequests) return;
  sent++;
  const target = 1024 + Math.floor(Math.random() * 60000);
  const stream = s.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:' + target });
  stream.on('response', (h) => {
    const status = h[':status'];
    statuses[status] = (statuses[status] || 0) + 1;
  });
  stream.on('error', () => {});
  stream.on('close', () => one(s));
  stream.resume();
};
const open = (i) => {
  if (stopped) return;
  const c = carriers[i];
  const s = http2.connect('https://localhost:' + port, {
    createConnection: () =>
      tls.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.2', servername: 'localhost',
        ca: caPem, cert: c.certPem, key: c.keyPem, ALPNProtocols: ['h2'] }),
  });
  sessions.add(s);
  s.on('error', () => {});
  s.once('connect', () => { connections++; for (let k = 0; k < inFlight; k++) one(s); });
  s.once('close', () => { sessions.delete(s); setTimeout(() => open(i), 10); });
};
carriers.forEach((_, i) => open(i));
const report = () => parentPort.postMessage({ sent, connections, statuses });
const timer = setInterval(report, 200);
parentPort.on('message', () => {
  stopped = true;
  clearInterval(timer);
  for (const s of sessions) s.destroy();
  report();
  setTimeout(() => process.exit(0), 50);
});
`;

async function flood(gw: GatewayProcess, connections: number, inFlight: number, maxRequests: number) {
  const carriers = await Promise.all(
    Array.from({ length: connections }, async () => {
      const c = await createCarrier(`flood-${randomUUID()}`);
      return { certPem: c.certPem, keyPem: c.keyPem };
    }),
  );
  const worker = new Worker(FLOOD_WORKER, {
    eval: true,
    workerData: { port: gw.port, caPem: gw.caPem, carriers, inFlight, maxRequests },
  });
  let last: { sent: number; connections: number; statuses: Record<string, number> } = {
    sent: 0,
    connections: 0,
    statuses: {},
  };
  worker.on('message', (m: typeof last) => {
    last = m;
  });
  return {
    get sent() {
      return last.sent;
    },
    get statuses() {
      return last.statuses;
    },
    get connections() {
      return last.connections;
    },
    async stop() {
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      worker.postMessage('stop');
      await Promise.race([exited, sleep(5000).then(() => worker.terminate())]);
    },
  };
}

/** CONNECTs the gateway has refused so far, every reason. */
async function deniedSoFar(gw: GatewayProcess): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${gw.adminPort}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith('agent_gateway_connect_decisions_total{result="deny"'))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

/** A migrated database on the shared cluster, an echo destination and a gateway, for one describe block. */
function gatewaySuite(dbName: string, extra: Toml = {}) {
  const adminUrl = inject('pgAdminUrl');
  const ctx = { dbUrl: '', gw: undefined as unknown as GatewayProcess, sessions: [] as ClientHttp2Session[] };
  let echo: Upstream | undefined;
  beforeAll(async () => {
    ctx.dbUrl = await createMigratedDatabase(adminUrl, dbName);
    echo = await startEchoServer();
    ctx.gw = await gateway(ctx.dbUrl, echo, extra);
  });
  afterAll(async () => {
    for (const s of ctx.sessions) await closeSession(s);
    await ctx.gw?.cleanup();
    await echo?.close();
    if (ctx.dbUrl) await dropDatabase(adminUrl, ctx.dbUrl);
  });
  return ctx;
}

describe('revocation under a CONNECT flood (item 1)', () => {
  // Default limits: the operator's view (per-address budgets, registry lanes, unproven-stream cap).
  const suite = gatewaySuite('revocation_flood');

  it('ends a revoked tunnel within 2 s and answers a legitimate uncached CONNECT while 12 clients flood', async () => {
    const { gw, dbUrl, sessions } = suite;
    const alice = createPrincipalKey();
    const victim = await grantedTunnel(gw, dbUrl, alice, 'agent-alpha', sessions);
    const beta = await createCarrier('agent-beta');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: alice,
      identity: beta.identity,
      subjectSpkiDer: beta.spkiDer,
      destination: 'docstore:443',
    });

    const attack = await flood(gw, 12, 500, 400_000);
    try {
      // Let the flood fill whatever queue there is.
      // The flood is in full swing once the gateway has refused a thousand of its CONNECTs.
      for (let i = 0; i < 75 && (await deniedSoFar(gw)) < 1000; i++) await sleep(200);
      expect(await deniedSoFar(gw), JSON.stringify(attack.statuses)).toBeGreaterThanOrEqual(1000);

      await revokePermission(dbUrl, victim.permissionId);
      const committed = Date.now();
      // Meanwhile a legitimate agent connects and asks its first (uncached) CONNECT: an answer, never a hang.
      const legitimate = (async () => {
        const betaSession = await connectH2(gw.port, { ca: gw.caPem, carrier: beta });
        sessions.push(betaSession);
        const asked = Date.now();
        const answer = await Promise.race([
          openTunnel(betaSession, 'docstore:443').then((t) =>
            t.status === 200 ? 200 : `${t.status} ${String(t.headers['agent-gateway-deny-reason'])}`,
          ),
          sleep(5000).then(() => 'no answer within 5 s'),
        ]);
        return { answer, answeredMs: Date.now() - asked };
      })();

      await closed(victim.pump.stream, 4000).catch(() => undefined);
      const lag = await scrapeMetric(gw.adminPort!, 'nodejs_eventloop_lag_p99_seconds');
      expect(
        victim.pump.closedAt,
        `the revoked tunnel is still open (event loop lag p99 ${lag} s)`,
      ).toBeDefined();
      expect(victim.pump.closedAt! - committed, `event loop lag p99 ${lag} s`).toBeLessThan(2000);

      const { answer, answeredMs } = await legitimate;
      expect([200, '503 registry_busy'], `legitimate CONNECT after ${answeredMs} ms`).toContain(answer);
    } finally {
      await attack.stop();
    }
    const line = (await gw.waitForLogs('tunnel closed', (l) => l['source_identity'] === 'agent-alpha'))[0];
    expect(line).toMatchObject({ end_reason: 'revoked', permission_id: victim.permissionId });
    // None of the flood got a tunnel.
    expect(attack.statuses['200'], JSON.stringify(attack.statuses)).toBeUndefined();
  });
});

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
