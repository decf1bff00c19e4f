// One gateway for the request-path tests (gateway-tunnel-*.test.ts): its own migrated database on the
// shared cluster, agent-alpha granted every destination it is given (signed by org-alice), the gateway
// dialling them through upstream overrides, and agent-alpha's HTTP/2 connection to it.
import type { ClientHttp2Session } from 'node:http2';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import {
  closeSession,
  connectH2,
  type GatewayProcess,
  scrapeMetric,
  startGatewayProcess,
} from './gateway.js';

export const IDLE_MS = 1500;
export const CONNECT_TIMEOUT_MS = 1000;

export type TunnelGateway = {
  readonly gw: GatewayProcess;
  readonly agent: Carrier;
  /** agent-alpha's connection, open for the whole file. */
  readonly session: ClientHttp2Session;
  /** agent_gateway_<series> from /metrics; a labelled counter not yet incremented is absent, i.e. 0. */
  counter(series: string): Promise<number>;
  stop(): Promise<void>;
};

/** Grants agent-alpha each key of `overrides` and each of `alsoGranted`, then starts the gateway. */
export async function startTunnelGateway(
  adminUrl: string,
  dbName: string,
  overrides: Record<string, string>,
  alsoGranted: readonly string[],
): Promise<TunnelGateway> {
  const dbUrl = await createMigratedDatabase(adminUrl, dbName);
  const agent = await createCarrier('agent-alpha');
  const principal = createPrincipalKey();
  for (const destination of [...Object.keys(overrides), ...alsoGranted]) {
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination,
    });
  }
  const gw = await startGatewayProcess({
    databaseUrl: dbUrl,
    config: {
      upstream: { connect_timeout_ms: CONNECT_TIMEOUT_MS, tunnel_idle_timeout_ms: IDLE_MS, overrides },
    },
  });
  const session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
  return {
    gw,
    agent,
    session,
    counter: async (series) => (await scrapeMetric(gw.adminPort!, `agent_gateway_${series}`)) ?? 0,
    async stop() {
      await closeSession(session);
      await gw.cleanup();
      await dropDatabase(adminUrl, dbUrl);
    },
  };
}
