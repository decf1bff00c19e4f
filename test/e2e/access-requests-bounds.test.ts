// Access requests under pressure (docs/contract.md "Access requests"): the per-key rate, requests.max_pending
// against a flood of new keys and destinations, every drop counted in /metrics, and a registry that
// cannot take the writes never delaying a 403. Then the registries and settings that record nothing: one
// at schema version 6 (no table: the gateway works as before, without the header) and requests.enabled
// = false. Real gateway processes, real PostgreSQL.
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { accessRequestId } from '../../core/access-request-id.js';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createDatabaseAtVersion, createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { requestRows, waitForRequest } from '../support/access-requests.js';
import {
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  scrapeMetric,
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const MAX_PENDING = 20;
const RATE_PER_MINUTE = 5;
// Long, so that a write blocked behind a lock is still waiting while the 403s are timed.
const QUERY_TIMEOUT_MS = 3000;

type Outcome = 'recorded' | 'dropped_rate' | 'dropped_full' | 'failed';

/** A fresh identity (and key) with its own HTTP/2 connection to the gateway. */
type Client = { readonly carrier: Carrier; readonly session: import('node:http2').ClientHttp2Session };

describe('access requests under pressure', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let db: pg.Client;
  let gw: GatewayProcess;
  const clients: Client[] = [];
  /** Recorded after the blocked writes; the flood then checks that its row is still counted on. */
  let survivor: Client | undefined;

  const outcomes = async (): Promise<Record<Outcome, number>> => {
    const read = async (o: Outcome) =>
      (await scrapeMetric(gw.adminPort as number, `agent_gateway_access_requests_total{outcome="${o}"}`)) ??
      Number.NaN;
    return {
      recorded: await read('recorded'),
      dropped_rate: await read('dropped_rate'),
      dropped_full: await read('dropped_full'),
      failed: await read('failed'),
    };
  };

  const newClient = async (prefix: string): Promise<Client> => {
    const carrier = await createCarrier(`${prefix}-${randomBytes(3).toString('hex')}`);
    const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
    const client = { carrier, session };
    clients.push(client);
    return client;
  };

  /** CONNECT `destination`: its status, request id, and how long the answer took (ms). */
  const deny = async (c: Client, destination: string) => {
    const started = performance.now();
    const t = await openTunnel(c.session, destination);
    return {
      status: t.status,
      requestId: t.headers['agent-gateway-request-id'],
      ms: performance.now() - started,
    };
  };

  const randomDestination = () => `d-${randomBytes(5).toString('hex')}.example:443`;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'access_request_bounds');
    db = new pg.Client({ connectionString: dbUrl });
    await db.connect();
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        // The floods below are concurrent cache misses: let them all reach the registry.
        policy: {
          query_timeout_ms: QUERY_TIMEOUT_MS,
          max_lookups_in_flight: 1000,
          pool_acquire_timeout_ms: 5000,
        },
        requests: { max_pending: MAX_PENDING, rate_per_identity: RATE_PER_MINUTE, flush_interval_ms: 50 },
      },
    });
  });

  afterAll(async () => {
    for (const c of clients) await closeSession(c.session);
    await gw?.cleanup();
    await db?.end();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('records at most rate_per_identity denials per key per minute, and counts the rest', async () => {
    const before = await outcomes();
    const c = await newClient('repeat');
    for (let i = 0; i < 2 * RATE_PER_MINUTE; i++) expect((await deny(c, 'docstore:443')).status).toBe(403);
    const id = accessRequestId(c.carrier.identity, c.carrier.spkiDer, 'docstore:443');
    const row = await waitForRequest(db, id, (r) => r.request_count >= RATE_PER_MINUTE);
    const after = await outcomes();
    // Every denial is accounted for once: written, or dropped over the rate.
    expect(after.recorded - before.recorded + after.dropped_rate - before.dropped_rate).toBe(
      2 * RATE_PER_MINUTE,
    );
    // A bucket refills one token per 60/RATE s: at most one more in the time this takes.
    expect(row.request_count).toBeLessThanOrEqual(RATE_PER_MINUTE + 1);
    expect(after.dropped_rate - before.dropped_rate).toBe(2 * RATE_PER_MINUTE - row.request_count);
  });

  it('answers every 403 at once while the registry cannot take the writes, and drops the batch', async () => {
    const writer = await Promise.all(Array.from({ length: 6 }, () => newClient('blocked')));
    const before = await outcomes();
    const blocker = new pg.Client({ connectionString: dbUrl });
    await blocker.connect();
    const sent: { client: Client; destination: string }[] = [];
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE access_requests IN ACCESS EXCLUSIVE MODE');
      const answers = await Promise.all(
        writer.flatMap((client) =>
          Array.from({ length: 3 }, () => {
            const destination = randomDestination();
            sent.push({ client, destination });
            return deny(client, destination);
          }),
        ),
      );
      for (const a of answers) {
        expect(a.status).toBe(403);
        expect(a.requestId).toMatch(/^req-[0-9a-f]{20}$/);
      }
      // A write waits up to QUERY_TIMEOUT_MS for the lock; no answer waited for it.
      expect(Math.max(...answers.map((a) => a.ms))).toBeLessThan(QUERY_TIMEOUT_MS / 2);
      const deadline = Date.now() + 4 * QUERY_TIMEOUT_MS;
      while ((await outcomes()).failed - before.failed < sent.length && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
    } finally {
      await blocker.query('ROLLBACK');
      await blocker.end();
    }
    const after = await outcomes();
    expect(after.failed - before.failed).toBe(sent.length);
    expect(after.recorded).toBe(before.recorded);

    // The dropped batch is not retried; the next denial is written as usual.
    const next = await newClient('after');
    survivor = next;
    expect((await deny(next, 'docstore:443')).status).toBe(403);
    await waitForRequest(db, accessRequestId(next.carrier.identity, next.carrier.spkiDer, 'docstore:443'));
    const ids = sent.map((s) =>
      accessRequestId(s.client.carrier.identity, s.client.carrier.spkiDer, s.destination),
    );
    expect(await requestRows(db, 'request_id = ANY($1)', [ids])).toEqual([]);
  });

  it('a flood of 12 identities × random destinations stays within max_pending and the rate, all answered', async () => {
    const flood = await Promise.all(Array.from({ length: 12 }, () => newClient('flood')));
    const pendingBefore = (await requestRows(db, "status = 'pending'")).length;
    expect(pendingBefore).toBeLessThan(MAX_PENDING);
    const before = await outcomes();
    const perClient = 2 * RATE_PER_MINUTE;
    const started = performance.now();
    const answers = await Promise.all(
      flood.flatMap((c) => Array.from({ length: perClient }, () => deny(c, randomDestination()))),
    );
    const elapsed = performance.now() - started;
    expect(answers.filter((a) => a.status === 403 && a.requestId !== undefined)).toHaveLength(answers.length);
    expect(elapsed).toBeLessThan(QUERY_TIMEOUT_MS);

    const total = answers.length;
    const deadline = Date.now() + 10_000;
    let after = await outcomes();
    const accounted = (o: Record<Outcome, number>) =>
      o.recorded +
      o.dropped_rate +
      o.dropped_full -
      (before.recorded + before.dropped_rate + before.dropped_full);
    while (accounted(after) < total && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      after = await outcomes();
    }
    expect(accounted(after)).toBe(total);
    expect(after.failed).toBe(before.failed);
    // Only room for MAX_PENDING pending rows; the rest of the new requests were refused and counted.
    expect(after.recorded - before.recorded).toBe(MAX_PENDING - pendingBefore);
    expect(await requestRows(db, "status = 'pending'")).toHaveLength(MAX_PENDING);
    const rateDrops = after.dropped_rate - before.dropped_rate;
    expect(rateDrops).toBeGreaterThanOrEqual(flood.length * (perClient - RATE_PER_MINUTE - 1));
    expect(rateDrops).toBeLessThanOrEqual(flood.length * (perClient - RATE_PER_MINUTE));
    expect(after.dropped_full - before.dropped_full).toBe(total - rateDrops - (MAX_PENDING - pendingBefore));

    // Full: no new row, but an existing one is still counted on.
    const s = survivor as Client;
    expect((await deny(s, 'docstore:443')).status).toBe(403);
    expect((await deny(s, randomDestination())).status).toBe(403);
    await waitForRequest(
      db,
      accessRequestId(s.carrier.identity, s.carrier.spkiDer, 'docstore:443'),
      (r) => r.request_count === 2,
    );
    expect(await requestRows(db, "status = 'pending'")).toHaveLength(MAX_PENDING);
  });
});

describe('access requests off', () => {
  const adminUrl = inject('pgAdminUrl');
  const dbs: string[] = [];
  let gw: GatewayProcess | undefined;
  let echo: Upstream;

  beforeAll(async () => {
    echo = await startEchoServer();
  });

  afterAll(async () => {
    await gw?.cleanup();
    await echo?.close();
    for (const url of dbs) await dropDatabase(adminUrl, url);
  });

  /** A gateway on `dbUrl` with docstore:443 granted to a fresh agent: its 403 and 200 answers. */
  const answers = async (dbUrl: string, requests: Record<string, unknown> = {}) => {
    const agent = await createCarrier('agent-beta');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'docstore:443',
    });
    await gw?.cleanup();
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
        requests: { flush_interval_ms: 10, ...requests },
      },
    });
    const session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    try {
      const denied = await openTunnel(session, 'wiki:443');
      const allowed = await openTunnel(session, 'docstore:443');
      allowed.stream.close();
      return { denied, allowed };
    } finally {
      await closeSession(session);
    }
  };

  it('a registry at schema version 6: one info line at start, then the 403 as before, no request id', async () => {
    const dbUrl = await createDatabaseAtVersion(adminUrl, 'access_requests_v6', 6);
    dbs.push(dbUrl);
    const { denied, allowed } = await answers(dbUrl);
    expect(allowed.status).toBe(200);
    expect(denied.status).toBe(403);
    expect(denied.headers['agent-gateway-deny-reason']).toBe('no_permission');
    expect(denied.headers['agent-gateway-request-id']).toBeUndefined();
    const lines = gw?.logs(
      'access requests are not recorded: the registry has no access_requests table (run the migrations: agent_gateway_registry migrate)',
    );
    expect(lines).toHaveLength(1);
    expect(lines?.[0]).toMatchObject({ schema_version: 6, required: 7, level: 'info' });
  });

  it('requests.enabled = false: no request id and no row', async () => {
    const dbUrl = await createMigratedDatabase(adminUrl, 'access_requests_off');
    dbs.push(dbUrl);
    const { denied, allowed } = await answers(dbUrl, { enabled: false });
    expect(allowed.status).toBe(200);
    expect(denied.status).toBe(403);
    expect(denied.headers['agent-gateway-deny-reason']).toBe('no_permission');
    expect(denied.headers['agent-gateway-request-id']).toBeUndefined();
    // Nothing to wait for when nothing is written: give a flush many times over.
    await new Promise((r) => setTimeout(r, 500));
    const c = new pg.Client({ connectionString: dbUrl });
    await c.connect();
    try {
      expect(await requestRows(c)).toEqual([]);
    } finally {
      await c.end();
    }
  });
});
