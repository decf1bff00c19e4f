// /healthz, /readyz, /metrics on an ephemeral port with stubbed readiness inputs.
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../gateway/admin-server.js';
import { createGatewayMetrics } from '../../gateway/metrics.js';
import type { PingResult } from '../../gateway/registry.js';
import { parseRegistryChange } from '../../gateway/registry-changes.js';

const servers: AdminServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

function get(
  port: number,
  path: string,
  method = 'GET',
): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

async function start(state: {
  ping: PingResult;
  accepting: boolean;
  draining: boolean;
  pingDelayMs?: number;
}) {
  const metrics = createGatewayMetrics({ defaultMetrics: true });
  let pings = 0;
  const server = await startAdminServer({
    listenAddr: { host: '127.0.0.1', port: 0 },
    metrics,
    pingRegistry: async () => {
      pings++;
      if (state.pingDelayMs) await new Promise((r) => setTimeout(r, state.pingDelayMs));
      return state.ping;
    },
    isAccepting: () => state.accepting,
    isDraining: () => state.draining,
    revocationState: () => ({
      mode: 'listening',
      listenerUp: true,
      notifications: true,
      openTunnels: 2,
      pendingRechecks: 0,
      lastError: undefined,
    }),
    pingTimeoutMs: 200,
  });
  servers.push(server);
  return { server, metrics, port: server.address.port, pings: () => pings };
}

describe('admin server', () => {
  it('/healthz is always ok; unknown paths 404; non-GET 405', async () => {
    const { port } = await start({ ping: { ok: false, error: 'down' }, accepting: false, draining: true });
    expect(await get(port, '/healthz')).toMatchObject({ status: 200, body: '{"status":"ok"}\n' });
    expect((await get(port, '/nope')).status).toBe(404);
    expect((await get(port, '/healthz', 'POST')).status).toBe(405);
    expect((await get(port, '/healthz?x=1')).status).toBe(200);
  });

  // Readiness table: every input, alone, makes it fail and is named in the body.
  const READY = [
    [{ ping: { ok: true, version: 3 }, accepting: true, draining: false }, 200, []],
    [{ ping: { ok: false, error: 'ECONNREFUSED' }, accepting: true, draining: false }, 503, ['registry']],
    [{ ping: { ok: true, version: 3 }, accepting: false, draining: false }, 503, ['listener']],
    [{ ping: { ok: true, version: 3 }, accepting: true, draining: true }, 503, ['draining']],
    [
      { ping: { ok: false, error: 'x' }, accepting: false, draining: true },
      503,
      ['registry', 'listener', 'draining'],
    ],
  ] as const;
  it.each(READY)('/readyz %j → %i', async (state, status, failing) => {
    const { port } = await start({ ...state });
    const r = await get(port, '/readyz');
    expect(r.status).toBe(status);
    expect(r.type).toBe('application/json');
    const body = JSON.parse(r.body) as { failing?: string[]; status: string; revocation: unknown };
    expect(body.failing ?? []).toEqual(failing);
    expect(body.status).toBe(status === 200 ? 'ready' : 'not_ready');
    expect(body.revocation).toEqual({ mode: 'listening', open_tunnels: 2 });
  });

  it('/readyz is 200 "degraded" with the reason when a replica answers for the primary; draining still wins', async () => {
    const degraded = 'registry primary unreachable (ECONNREFUSED); lookups answered by replica_1';
    const { port } = await start({
      ping: { ok: true, version: 3, degraded },
      accepting: true,
      draining: false,
    });
    const r = await get(port, '/readyz');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({
      status: 'degraded',
      degraded,
      checks: { registry: { ok: true } },
    });
    const drain = await start({ ping: { ok: true, version: 3, degraded }, accepting: true, draining: true });
    const d = await get(drain.port, '/readyz');
    expect(d.status).toBe(503);
    expect(JSON.parse(d.body)).toMatchObject({ status: 'not_ready', failing: ['draining'] });
  });

  it('/readyz fails when the registry ping hangs, and concurrent probes share one ping', async () => {
    const { port, pings } = await start({
      ping: { ok: true, version: 3 },
      accepting: true,
      draining: false,
      pingDelayMs: 1000,
    });
    const results = await Promise.all([1, 2, 3, 4, 5].map(() => get(port, '/readyz')));
    expect(results.every((r) => r.status === 503)).toBe(true);
    expect(JSON.parse(results[0]!.body).checks.registry.detail).toMatch(/exceeded 200 ms/);
    expect(pings()).toBe(1);
  });

  it('/metrics renders every gateway metric in Prometheus text format', async () => {
    const { port, metrics } = await start({
      ping: { ok: true, version: 3 },
      accepting: true,
      draining: false,
    });
    metrics.connectDecisions.inc({ result: 'deny', reason: 'no_permission' });
    metrics.tunnelBytes.closed({ bytesClientToDest: 10, bytesDestToClient: 0 });
    const r = await get(port, '/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const name of [
      'agent_gateway_connections_total',
      'agent_gateway_connections_open',
      'agent_gateway_tunnels_open',
      'agent_gateway_connect_decisions_total{result="deny",reason="no_permission"} 1',
      '# TYPE agent_gateway_decision_seconds histogram',
      '# TYPE agent_gateway_registry_query_seconds histogram',
      'agent_gateway_registry_errors_total',
      'agent_gateway_bytes_total{direction="client_to_dest"} 10',
      'agent_gateway_upstream_connect_failures_total',
      'agent_gateway_limit_rejections_total',
      'agent_gateway_revocations_total',
      'agent_gateway_registry_listener_up',
      'agent_gateway_decision_cache_hits_total',
      'agent_gateway_decision_cache_misses_total',
      'process_cpu_seconds_total',
      'nodejs_eventloop_lag_seconds',
    ]) {
      expect(r.body).toContain(name);
    }
  });
});

describe('registry change payloads', () => {
  const ROWS = [
    [
      '{"table":"permission_registry","op":"UPDATE","permission_id":"p1","signing_key_id":"k"}',
      { table: 'permission_registry', op: 'UPDATE', permissionId: 'p1', signingKeyId: 'k' },
    ],
    [
      '{"table":"principal_key_permissions","op":"INSERT","signing_key_id":"k","destination":"a:443"}',
      { table: 'principal_key_permissions', op: 'INSERT', signingKeyId: 'k', destination: 'a:443' },
    ],
    ['{"table":"*","op":"TRUNCATE"}', { table: '*', op: 'TRUNCATE' }],
    ['not json', { table: '*' }],
    ['', { table: '*' }],
    ['[]', { table: '*' }],
    ['{"op":"UPDATE"}', { table: '*' }],
    ['{"table":"permission_registry","permission_id":42}', { table: 'permission_registry' }],
  ] as const;
  it.each(ROWS)('%s', (payload, expected) => {
    const parsed = parseRegistryChange(payload);
    const defined = Object.fromEntries(Object.entries(parsed).filter(([, v]) => v !== undefined));
    expect(defined).toEqual(expected);
  });
});
