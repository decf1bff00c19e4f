// Tracing (docs/contract.md "CONNECT: answers and log lines"): with observability.otlp_endpoint set, each
// CONNECT is one span "gateway CONNECT" exported over OTLP/gRPC, in the caller's trace (W3C traceparent). The
// collector here is a bare h2c gRPC endpoint that keeps the raw ExportTraceServiceRequest bytes; the trace id
// and span name are found in them without decoding protobuf.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  openTunnel,
  startGatewayProcess,
} from '../support/gateway.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

type Collector = { port: number; requests: Buffer[]; close(): Promise<void> };

async function startCollector(): Promise<Collector> {
  const requests: Buffer[] = [];
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      if (headers[':path'] === EXPORT_PATH) requests.push(Buffer.concat(chunks));
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      // Empty ExportTraceServiceResponse: uncompressed flag + zero length.
      stream.end(Buffer.alloc(5));
    });
    stream.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('tracing', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let collector: Collector;
  let echo: Upstream;
  let agent: Carrier;
  let gw: GatewayProcess;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'gateway_tracing');
    [collector, echo, agent] = await Promise.all([
      startCollector(),
      startEchoServer(),
      createCarrier('agent-alpha'),
    ]);
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'docstore:443',
    });
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        observability: { otlp_endpoint: `http://127.0.0.1:${collector.port}` },
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
      },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    await collector?.close();
    await echo?.close();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  it('exports one "gateway CONNECT" span per CONNECT in the caller\'s trace', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const parentSpan = '00f067aa0ba902b7';
    const session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
    const allowed = await openTunnel(session, 'docstore:443', {
      traceparent: `00-${traceId}-${parentSpan}-01`,
    });
    expect(allowed.status).toBe(200);
    allowed.stream.end();
    await closed(allowed.stream);
    const denied = await openTunnel(session, 'elsewhere.test:443', {
      traceparent: `00-${traceId}-${parentSpan}-01`,
    });
    expect(denied.status).toBe(403);
    await closeSession(session);

    const byTrace = (l: Record<string, unknown>) => l['trace_id'] === traceId;
    expect(await gw.waitForLogs('CONNECT allowed', byTrace)).toHaveLength(1);
    expect(await gw.waitForLogs('CONNECT denied', byTrace)).toHaveLength(1);

    // Shutdown flushes the batch span processor.
    expect(await gw.stop()).toBe(0);
    const all = Buffer.concat(collector.requests);
    expect(all.includes(Buffer.from(traceId, 'hex'))).toBe(true);
    expect(all.includes(Buffer.from(parentSpan, 'hex'))).toBe(true);
    let spans = 0;
    for (let at = all.indexOf('gateway CONNECT'); at >= 0; at = all.indexOf('gateway CONNECT', at + 1))
      spans++;
    expect(spans).toBe(2);
  });
});
