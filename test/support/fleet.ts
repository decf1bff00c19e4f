// The fleet tests' registry (issue #18, docs/contract.md "Replicas"): a PostgreSQL primary of their own
// (they stop it), a streaming replica of it (dev-support/pg-replica.ts), one migrated database seen through
// both, an echo destination, and gateways on that primary with the replica for lookups. The decision cache
// is off in these gateways, so every CONNECT is a registry lookup and the source counts mean something.
import type { ClientHttp2Session } from 'node:http2';
import { expect } from 'vitest';
import { type ReplicaHandle, startReplica } from '../../dev-support/pg-replica.js';
import { type Carrier, createCarrier, createPrincipalKey, type PrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, type PgHandle, startPostgres } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import {
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  scrapeMetric,
  startGatewayProcess,
} from './gateway.js';
import { Pump } from './pump.js';
import { startEchoServer, type Upstream } from './upstreams.js';

export const DESTINATION = 'docstore:443';

export type Fleet = {
  readonly primary: PgHandle;
  readonly replica: ReplicaHandle;
  /** The registry database on the primary, and the same database on the replica. */
  readonly dbUrl: string;
  readonly replicaDbUrl: string;
  readonly echo: Upstream;
  readonly principal: PrincipalKey;
  readonly sessions: ClientHttp2Session[];
  /** A gateway on the primary with the replica for lookups (`policy` merged over the fleet's). */
  gateway(policy?: Record<string, unknown>): Promise<GatewayProcess>;
  /** A new agent with a grant for DESTINATION; resolves once the replica has replayed it. */
  grantedAgent(identity: string): Promise<{ carrier: Carrier; permissionId: string }>;
  /** An HTTP/2 session of `carrier` to `gw` (closed by close()). */
  session(gw: GatewayProcess, carrier: Carrier): Promise<ClientHttp2Session>;
  /** A CONNECT that must be 200, with bytes flowing. */
  tunnel(session: ClientHttp2Session): Promise<Pump>;
  close(): Promise<void>;
};

export async function startFleet(dbName: string): Promise<Fleet> {
  const primary = await startPostgres();
  const replica = await startReplica(primary.dir).catch(async (err: unknown) => {
    await primary.destroy();
    throw err;
  });
  const dbUrl = await createMigratedDatabase(primary.url, dbName);
  const replicaDbUrl = withPort(dbUrl, replica.port);
  await replica.caughtUp(primary.url);
  const echo = await startEchoServer();
  const principal = createPrincipalKey();
  const gateways: GatewayProcess[] = [];
  const sessions: ClientHttp2Session[] = [];
  return {
    primary,
    replica,
    dbUrl,
    replicaDbUrl,
    echo,
    principal,
    sessions,
    async gateway(policy = {}) {
      const gw = await startGatewayProcess({
        databaseUrl: dbUrl,
        config: {
          policy: {
            replica_database_url: [replicaDbUrl],
            decision_cache_max_entries: 0,
            revocation_recheck_interval_ms: 500,
            ...policy,
          },
          upstream: { overrides: { [DESTINATION]: `127.0.0.1:${echo.port}` } },
        },
      });
      gateways.push(gw);
      return gw;
    },
    async grantedAgent(identity) {
      const carrier = await createCarrier(identity);
      const permissionId = await grant(dbUrl, {
        principalId: 'org-fleet',
        principal,
        identity,
        subjectSpkiDer: carrier.spkiDer,
        destination: DESTINATION,
      });
      await replica.caughtUp(primary.url);
      return { carrier, permissionId };
    },
    async session(gw, carrier) {
      const s = await connectH2(gw.port, { ca: gw.caPem, carrier });
      sessions.push(s);
      return s;
    },
    async tunnel(session) {
      const t = await openTunnel(session, DESTINATION);
      expect(t.status, String(t.headers['agent-gateway-deny-reason'])).toBe(200);
      const pump = new Pump(t.stream);
      expect(await pump.flowing()).toBe(true);
      return pump;
    },
    async close() {
      for (const s of sessions) await closeSession(s);
      for (const gw of gateways) await gw.cleanup();
      await echo.close();
      await replica.destroy();
      await primary.destroy();
    },
  };
}

function withPort(url: string, port: number): string {
  const u = new URL(url);
  u.port = String(port);
  return u.toString();
}

/** agent_gateway_registry_lookups_total{source} of one gateway (0 before the first). */
export async function lookups(gw: GatewayProcess, source: 'primary' | 'replica' | 'primary_fallback') {
  return (await scrapeMetric(gw.adminPort!, `agent_gateway_registry_lookups_total{source="${source}"}`)) ?? 0;
}

/** GET /readyz of one gateway: the status code and the JSON body. */
export async function readyz(gw: GatewayProcess): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`http://127.0.0.1:${gw.adminPort}/readyz`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}
