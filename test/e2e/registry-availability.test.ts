// Registry failure behaviour against a real PostgreSQL: fail closed when the database is down (own
// cluster, stopped and started), recovery without a restart, bounded pool acquire and query time.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { normalizeDestination } from '../../core/destination.js';
import { latestKnownVersion } from '../../core/migrate.js';
import {
  createMigratedDatabase,
  dropDatabase,
  type PgHandle,
  startPostgres,
} from '../../dev-support/postgres.js';
import { RegistryAuthorizer } from '../../gateway/authorizer.js';
import { LiveRevocation } from '../../gateway/live-revocation.js';
import { createGatewayMetrics } from '../../gateway/metrics.js';
import { Registry, type RegistryOptions, RegistryUnavailableError } from '../../gateway/registry.js';
import {
  DAY,
  insertPermission,
  insertScope,
  insertSigner,
  newP256,
  nowTruncated,
} from '../unit/fixtures/signed-rows.js';

async function seedAllowed(url: string) {
  const pgmod = (await import('pg')).default;
  const c = new pgmod.Client({ connectionString: url });
  await c.connect();
  const signer = newP256();
  const agent = newP256();
  const now = nowTruncated();
  try {
    await insertSigner(c, 'org-alice', signer.spkiDer, now - DAY, now + 30n * DAY);
    await insertScope(c, 'org-alice', 'api.example.com:443', now - DAY, now + 30n * DAY);
    await insertPermission(
      c,
      {
        permissionId: 'perm-1',
        signingKeyId: 'org-alice',
        subjectIdentity: 'agent-alpha',
        subjectSpkiDer: agent.spkiDer,
        destination: 'api.example.com:443',
        notBefore: now - DAY,
        notAfter: now + 7n * DAY,
      },
      signer.privateKey,
    );
  } finally {
    await c.end();
  }
  return {
    peer: { identity: 'agent-alpha', spkiDer: agent.spkiDer },
    dest: normalizeDestination('api.example.com'),
  };
}

const options = (url: string, patch: Partial<RegistryOptions> = {}): RegistryOptions => ({
  databaseUrl: url,
  maxConnections: 2,
  connectTimeoutMs: 1000,
  poolAcquireTimeoutMs: 500,
  queryTimeoutMs: 500,
  latestKnownVersion: latestKnownVersion(),
  ...patch,
});

describe('registry down and back (own cluster)', () => {
  let pg: PgHandle;
  beforeAll(async () => {
    pg = await startPostgres();
  });
  afterAll(async () => {
    await pg?.destroy();
  });

  it('denies registry_unavailable while stopped, recovers without restart, listener reconnects', async () => {
    const url = await createMigratedDatabase(pg.url, 'avail_restart');
    const { peer, dest } = await seedAllowed(url);
    const metrics = createGatewayMetrics({ defaultMetrics: false });
    const registry = new Registry(options(url, { metrics }));
    const authorizer = new RegistryAuthorizer({
      registry,
      cacheMaxEntries: 100,
      cacheTtlMs: 60_000,
      metrics,
    });
    const revocation = new LiveRevocation({
      authorizer,
      clientConfig: registry.clientConfig('agent_gateway_listen'),
      notifications: true,
      recheckIntervalMs: 200,
      metrics,
      reconnectMaxMs: 500,
    });
    try {
      await revocation.start();
      expect(revocation.state().mode).toBe('listening');
      expect((await authorizer.authorize(peer, dest)).allow).toBe(true);
      expect(await authorizer.authorize(peer, dest)).toMatchObject({ allow: true, cached: true });

      await pg.stop();
      await sleep(100);
      // Listener loss empties and bypasses the cache: no stale allow while blind.
      expect(revocation.state().listenerUp).toBe(false);
      expect((await metrics.registryListenerUp.get()).values[0]?.value).toBe(0);
      for (let i = 0; i < 3; i++) {
        const started = Date.now();
        const r = await authorizer.authorize(peer, dest);
        expect(r).toMatchObject({ allow: false, reason: 'registry_unavailable' });
        expect(Date.now() - started).toBeLessThan(2000);
      }
      const ping = await registry.ping();
      expect(ping.ok).toBe(false);
      const errors = await metrics.registryErrors.get();
      expect(errors.values.reduce((n, v) => n + v.value, 0)).toBeGreaterThan(0);

      await pg.start();
      // The very next CONNECT after the database is back works (no restart, no warm-up).
      expect((await authorizer.authorize(peer, dest)).allow).toBe(true);
      expect(await registry.ping()).toEqual({ ok: true, version: latestKnownVersion() });
      const deadline = Date.now() + 5000;
      while (revocation.state().mode !== 'listening' && Date.now() < deadline) await sleep(50);
      expect(revocation.state().mode).toBe('listening');
      expect((await metrics.registryListenerUp.get()).values[0]?.value).toBe(1);
    } finally {
      await revocation.close();
      await registry.close();
    }
  });

  it('checkSchema reports an unreachable database as RegistryUnavailableError', async () => {
    await pg.stop();
    const registry = new Registry(options(pg.url));
    try {
      await expect(registry.checkSchema()).rejects.toBeInstanceOf(RegistryUnavailableError);
    } finally {
      await registry.close();
      await pg.start();
    }
  });
});

describe('bounded waits (shared cluster)', () => {
  const adminUrl = inject('pgAdminUrl');
  let url: string;
  beforeAll(async () => {
    url = await createMigratedDatabase(adminUrl, 'avail_bounds');
  });
  afterAll(async () => {
    await dropDatabase(adminUrl, url);
  });

  it('gives up waiting for a pool client after poolAcquireTimeoutMs and returns late clients', async () => {
    const registry = new Registry(
      options(url, { maxConnections: 1, poolAcquireTimeoutMs: 200, queryTimeoutMs: 5000 }),
    );
    try {
      let release!: () => void;
      const held = registry.withClient('hold', async (c) => {
        await c.query('SELECT 1');
        await new Promise<void>((r) => {
          release = r;
        });
      });
      await sleep(50);
      const started = Date.now();
      const err = await registry
        .activeCandidates({ identity: 'a', spkiDer: Buffer.from('x'), destination: 'a:443' }, nowTruncated())
        .catch((e: unknown) => e);
      const waited = Date.now() - started;
      expect(err).toBeInstanceOf(RegistryUnavailableError);
      // Its only connection was in use the whole time: capacity, not an outage.
      expect((err as RegistryUnavailableError).kind).toBe('busy');
      expect((err as Error).message).toMatch(/all in use/);
      expect(waited).toBeGreaterThanOrEqual(180);
      expect(waited).toBeLessThan(1000);
      release();
      await held;
      // The abandoned waiter got the client later and handed it straight back.
      await sleep(50);
      expect(registry.poolStats()).toMatchObject({ total: 1, waiting: 0 });
      expect(await registry.ping()).toMatchObject({ ok: true });
    } finally {
      await registry.close();
    }
  });

  it('ends a slow query after queryTimeoutMs and keeps serving', async () => {
    const registry = new Registry(options(url, { maxConnections: 1, queryTimeoutMs: 200 }));
    try {
      const started = Date.now();
      const err = await registry
        .withClient('slow', (c) => c.query('SELECT pg_sleep(3)'))
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RegistryUnavailableError);
      expect((err as RegistryUnavailableError).kind).toBe('query_timeout');
      expect(Date.now() - started).toBeLessThan(1500);
      expect(await registry.ping()).toMatchObject({ ok: true });
    } finally {
      await registry.close();
    }
  });

  it('the server side cancels too (statement_timeout)', async () => {
    const registry = new Registry(options(url, { maxConnections: 1, queryTimeoutMs: 300 }));
    try {
      const timeout = await registry.withClient('show', (c) =>
        c.query<{ statement_timeout: string }>('SHOW statement_timeout'),
      );
      expect(timeout.rows[0]?.statement_timeout).toBe('400ms');
    } finally {
      await registry.close();
    }
  });

  it('lanes: lookups beyond the in-flight cap fail at once as busy, and re-checks never wait behind them', async () => {
    const registry = new Registry(
      options(url, {
        maxConnections: 1,
        maxLookupsInFlight: 3,
        poolAcquireTimeoutMs: 5000,
        queryTimeoutMs: 5000,
      }),
    );
    const request = { identity: 'a', spkiDer: Buffer.from('x'), destination: 'a:443' };
    try {
      // Three lookups fill the lookup lane: one holds its only connection, two wait for it.
      let release!: () => void;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      const held = [1, 2, 3].map(() =>
        registry.withClient('hold', async (c) => {
          await c.query('SELECT 1');
          await gate;
        }),
      );
      await sleep(100);
      const started = Date.now();
      const busy = await registry.activeCandidates(request, nowTruncated()).catch((e: unknown) => e);
      expect(busy).toBeInstanceOf(RegistryUnavailableError);
      expect((busy as RegistryUnavailableError).kind).toBe('busy');
      expect(Date.now() - started).toBeLessThan(100);
      // The recheck lane has its own connections: it answers while the lookup lane is full.
      expect(await registry.activeCandidates(request, nowTruncated(), 'recheck')).toEqual([]);
      release();
      await Promise.all(held);
      expect(await registry.activeCandidates(request, nowTruncated())).toEqual([]);
    } finally {
      await registry.close();
    }
  });

  it('lanes: a lookup that gave up waiting still counts against the cap until pg-pool drops its wait', async () => {
    // pg-pool keeps a waiter queued until its own connectionTimeoutMillis (connectTimeoutMs), longer here
    // than our acquire timeout: without counting those, each timed-out lookup would let a new one queue.
    const registry = new Registry(
      options(url, {
        maxConnections: 1,
        maxLookupsInFlight: 3,
        connectTimeoutMs: 10_000,
        poolAcquireTimeoutMs: 1000,
        queryTimeoutMs: 10_000,
      }),
    );
    const request = { identity: 'a', spkiDer: Buffer.from('x'), destination: 'a:443' };
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    try {
      const held = registry.withClient('hold', async (c) => {
        await c.query('SELECT 1');
        await gate;
      });
      await sleep(100);
      // Two lookups wait for the held connection and give up after the acquire timeout (busy).
      const waited = await Promise.all(
        [1, 2].map(() => registry.activeCandidates(request, nowTruncated()).catch((e: unknown) => e)),
      );
      for (const e of waited) expect((e as RegistryUnavailableError).kind).toBe('busy');
      // Their waits are still queued in pg-pool: the next lookup is refused at once, not queued a third time.
      const started = Date.now();
      const next = await registry.activeCandidates(request, nowTruncated()).catch((e: unknown) => e);
      expect((next as RegistryUnavailableError).kind).toBe('busy');
      expect(Date.now() - started, 'refused at the cap, without waiting for a connection').toBeLessThan(500);
      release();
      await held;
      // The late connections go back untouched and the cap is free again.
      expect(await registry.activeCandidates(request, nowTruncated())).toEqual([]);
    } finally {
      release(); // or close() would wait for the held connection forever
      await registry.close();
    }
  });

  it('refuses work after close', async () => {
    const registry = new Registry(options(url));
    await registry.close();
    await expect(registry.ping()).resolves.toMatchObject({ ok: false });
    await expect(registry.checkSchema()).rejects.toMatchObject({ kind: 'closed' });
  });
});
