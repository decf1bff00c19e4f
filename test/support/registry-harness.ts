// A gateway's registry side without the gateway process, for the live revocation and decision cache tests:
// its own migrated database on the shared cluster, the Registry pool, the RegistryAuthorizer (recording every
// change it is told of) and LiveRevocation on a real PostgreSQL LISTEN, plus helpers that write signed rows
// and open stand-in tunnels. Every harness is closed (database dropped) after the test that made it.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterEach, inject } from 'vitest';
import { normalizeDestination } from '../../core/destination.js';
import { latestKnownVersion } from '../../core/migrate.js';
import type { Micros } from '../../core/timestamp.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import type { DenyReason, Grant, LiveTunnel } from '../../gateway/authorization.js';
import { RegistryAuthorizer } from '../../gateway/authorizer.js';
import { LiveRevocation, type LiveRevocationOptions } from '../../gateway/live-revocation.js';
import { createGatewayMetrics } from '../../gateway/metrics.js';
import { Registry } from '../../gateway/registry.js';
import type { RegistryChange } from '../../gateway/registry-changes.js';
import {
  DAY,
  insertPermission,
  insertScope,
  insertSigner,
  newP256,
  nowTruncated,
  type P256,
} from '../unit/fixtures/signed-rows.js';

const adminUrl = inject('pgAdminUrl');

class StubTunnel implements LiveTunnel {
  revoked: { reason: DenyReason | 'expired'; detail: string; at: number } | undefined;
  constructor(
    readonly id: string,
    public grant: Grant,
    readonly peerAddr = '127.0.0.1:40000',
  ) {}
  revoke(reason: DenyReason | 'expired', detail: string): void {
    this.revoked ??= { reason, detail, at: performance.now() };
  }
}

const open: { close(): Promise<void> }[] = [];

/** Call once at the top of a test file: closes every harness after the test that opened it. */
export function registryHarness(): typeof harness {
  afterEach(async () => {
    for (const h of open.splice(0)) await h.close();
  });
  return harness;
}

async function harness(name: string, revocationOptions: Partial<LiveRevocationOptions> = {}) {
  const url = await createMigratedDatabase(adminUrl, name);
  const writer = new pg.Client({ connectionString: url });
  await writer.connect();
  const metrics = createGatewayMetrics({ defaultMetrics: false });
  const registry = new Registry({
    databaseUrl: url,
    maxConnections: 5,
    connectTimeoutMs: 2000,
    poolAcquireTimeoutMs: 1000,
    queryTimeoutMs: 1000,
    latestKnownVersion: latestKnownVersion(),
    metrics,
  });
  const authorizer = new RegistryAuthorizer({ registry, cacheMaxEntries: 1000, cacheTtlMs: 60_000, metrics });
  const changes: { change: RegistryChange; at: number }[] = [];
  const onChange = authorizer.onRegistryChange.bind(authorizer);
  authorizer.onRegistryChange = (change) => {
    changes.push({ change, at: performance.now() });
    onChange(change);
  };
  const revocation = new LiveRevocation({
    authorizer,
    clientConfig: registry.clientConfig('agent_gateway_listen'),
    notifications: true,
    recheckIntervalMs: 500,
    metrics,
    ...revocationOptions,
  });
  await revocation.start();
  const now = nowTruncated();
  const signers = new Map<string, P256>();
  const agents = new Map<string, P256>();
  const agent = (identity: string) => {
    const known = agents.get(identity);
    if (known !== undefined) return known;
    const k = newP256();
    agents.set(identity, k);
    return k;
  };
  const h = {
    url,
    writer,
    metrics,
    registry,
    authorizer,
    revocation,
    changes,
    async signer(keyId: string, notAfter: Micros = now + 60n * DAY) {
      const k = newP256();
      signers.set(keyId, k);
      await insertSigner(writer, keyId, k.spkiDer, now - DAY, notAfter);
      return k;
    },
    async scope(keyId: string, destination: string, notAfter: Micros = now + 60n * DAY) {
      return insertScope(writer, keyId, destination, now - 2n * DAY, notAfter);
    },
    async permit(
      permissionId: string,
      keyId: string,
      identity: string,
      destination: string,
      notAfter: Micros = now + 7n * DAY,
    ) {
      await insertPermission(
        writer,
        {
          permissionId,
          signingKeyId: keyId,
          subjectIdentity: identity,
          subjectSpkiDer: agent(identity).spkiDer,
          destination,
          notBefore: now - DAY,
          notAfter,
        },
        signers.get(keyId)!.privateKey,
      );
    },
    authorize(identity: string, destination: string) {
      return authorizer.authorize(
        { identity, spkiDer: agent(identity).spkiDer },
        normalizeDestination(destination),
      );
    },
    async tunnel(identity: string, destination: string, id = `${identity}@${destination}`) {
      const r = await h.authorize(identity, destination);
      if (!r.allow)
        throw new Error(`expected allow for ${identity} → ${destination}, got ${r.reason}: ${r.detail}`);
      const t = new StubTunnel(id, r.grant);
      revocation.track(t);
      return t;
    },
    async sql(text: string, values: unknown[] = []): Promise<number> {
      await writer.query(text, values);
      return performance.now();
    },
    async close() {
      await revocation.close();
      await registry.close();
      await writer.end();
      await dropDatabase(adminUrl, url);
    },
  };
  open.push(h);
  return h;
}

export async function until(cond: () => boolean, timeoutMs: number, what = 'condition'): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`${what} not met within ${timeoutMs} ms`);
    await sleep(5);
  }
}
