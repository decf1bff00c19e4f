// The identity-claims tests' common parts (gateway-identity-claims-*.test.ts, issue #13): their registry,
// connecting from a chosen loopback address, the real agent's tunnel that must keep working, and how to read
// the outcomes.
import { randomBytes } from 'node:crypto';
import http2, { type ClientHttp2Session } from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { expect } from 'vitest';
import type { Carrier } from '../../dev-support/pki.js';
import type { PgHandle } from '../../dev-support/postgres.js';
import {
  closed,
  type GatewayProcess,
  openTunnel,
  roundTrip,
  scrapeMetric,
  type TunnelResult,
} from './gateway.js';
import { startOwnRegistry } from './own-registry.js';

/** Its own PostgreSQL, with build-agent-01 (the real agent) and agent-other granted echo.test:443. */
export async function startClaimsRegistry(
  dbName: string,
): Promise<{ pg: PgHandle; dbUrl: string; agent: Carrier; other: Carrier }> {
  const registry = await startOwnRegistry({
    dbName,
    principalId: 'org-claims',
    identities: ['build-agent-01', 'agent-other'],
    destinations: ['echo.test:443'],
  });
  const [agent, other] = registry.carriers as [Carrier, Carrier];
  return { pg: registry.pg, dbUrl: registry.dbUrl, agent, other };
}

const REGISTRY_LOOKUPS = 'agent_gateway_registry_query_seconds_count{query="active_candidates"}';

/** The registry lookups a gateway has made so far. */
export const lookups = async (g: GatewayProcess) => (await scrapeMetric(g.adminPort!, REGISTRY_LOOKUPS)) ?? 0;

/** connectH2 from a chosen loopback source address (127.0.0.0/8 is all local on Linux). */
export function connectFrom(
  port: number,
  ca: string,
  carrier: Carrier,
  localAddress: string,
): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://localhost:${port}`, {
      createConnection: () =>
        tls.connect({
          socket: net.connect({ host: '127.0.0.1', port, localAddress }),
          servername: 'localhost',
          ca,
          cert: carrier.certPem,
          key: carrier.keyPem,
          ALPNProtocols: ['h2'],
        }),
    });
    const onError = (err: Error) => reject(err);
    session.once('error', onError);
    session.once('connect', () => {
      session.off('error', onError);
      session.on('error', () => {});
      resolve(session);
    });
  });
}

/** A tunnel that echoes: 200 and 64 KiB there and back. */
export async function expectWorkingTunnel(session: ClientHttp2Session, why: string): Promise<void> {
  const t = await openTunnel(session, 'echo.test:443');
  expect(t.status, `${why}: ${String(t.headers['agent-gateway-deny-reason'])}`).toBe(200);
  const payload = randomBytes(64 * 1024);
  expect((await roundTrip(t.stream, payload)).equals(payload)).toBe(true);
  t.stream.end();
  await closed(t.stream);
}

export function denyReason(t: TunnelResult): string {
  return t.status === 200 ? 'ok' : `${t.status} ${String(t.headers['agent-gateway-deny-reason'])}`;
}

export function tally(outcomes: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const o of outcomes) out[o] = (out[o] ?? 0) + 1;
  return out;
}
