/**
 * Logs and traces. Log lines are JSON on stdout (docs/contract.md "CONNECT: answers and log lines" names the
 * messages and fields); traces are OTLP/gRPC and only exist when observability.otlp_endpoint is set, so the
 * OpenTelemetry SDK (and gRPC) is loaded on demand rather than paid for by every gateway.
 */

import { createHash } from 'node:crypto';
import {
  defaultTextMapGetter,
  isSpanContextValid,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import pino, { type Logger } from 'pino';
import type { GatewayConfig } from './config.js';

export type { Logger } from 'pino';

export type Telemetry = {
  readonly logger: Logger;
  readonly tracer: Tracer;
  /** Flush spans and log lines; never rejects. */
  shutdown(): Promise<void>;
};

const SERVICE_NAME = 'agent_gateway';

export function createLogger(observability: GatewayConfig['observability']): Logger {
  if (!observability.logStdout) return pino({ enabled: false });
  return pino(
    {
      level: observability.logLevel,
      base: { service: SERVICE_NAME, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Operators grep for "level":"warn", not 40.
      formatters: { level: (label) => ({ level: label }) },
    },
    batchedStdout(),
  );
}

/**
 * Largest single write: PIPE_BUF on Linux. Cluster workers share the primary's stdout; a pipe write of at
 * most PIPE_BUF bytes is atomic, and sonic-boom only ever writes whole buffered lines, so lines from
 * different workers never interleave (a single line over 4 KiB is written alone and may, as any write
 * that size would).
 */
const LOG_MAX_WRITE_BYTES = 4096;
/** A batch is written once this many bytes wait, or at the next flush tick. */
const LOG_BATCH_BYTES = 2048;
/** Longest a line waits in the buffer: short enough for `tail -f` and for an operator watching. */
const LOG_FLUSH_INTERVAL_MS = 100;

/**
 * Asynchronous stdout, written in batches. Each asynchronous write is a round trip through libuv's
 * thread pool (a futex wake, the write, an eventfd wake back): writing every line on its own made logging
 * the largest per-CONNECT cost after the TLS handshake itself (bench: 2 lines, ~8 futex calls and about a
 * third of the gateway's CPU per CONNECT at sequential rates). pino flushes what is buffered on exit.
 */
function batchedStdout() {
  const destination = pino.destination({
    dest: 1,
    sync: false,
    minLength: LOG_BATCH_BYTES,
    maxWrite: LOG_MAX_WRITE_BYTES,
  });
  setInterval(flushDestination, LOG_FLUSH_INTERVAL_MS, destination).unref();
  return destination;
}

function flushDestination(destination: ReturnType<typeof pino.destination>): void {
  // sonic-boom 4 counts buffered plus in-flight bytes in _len; flush() on an empty buffer would still
  // issue an empty write, ten times a second on an idle gateway. Without that field, always flush.
  const buffered = (destination as unknown as { _len?: unknown })._len;
  if (buffered === 0) return;
  // flush() throws once the destination is destroyed (shutdown): nothing left to write then.
  try {
    destination.flush();
  } catch {}
}

/**
 * Longest client-supplied value written into a log field, in JSON-encoded bytes. Identities, :authority
 * and the details quoting them come from whoever connects; uncapped, one request could write a 16 KiB
 * line, and a line over LOG_MAX_WRITE_BYTES may interleave with other workers' lines. With every such
 * field capped here, a decision line stays well under 4 KiB (docs/contract.md "Admission limits").
 */
export const LOG_FIELD_MAX_BYTES = 512;
/** Characters kept from an over-long value: even all escaped as \uXXXX, 6 bytes each, they fit. */
const LOG_FIELD_KEEP_CHARS = 64;

/**
 * A client-supplied string as it may appear in a log field: unchanged when short; otherwise its first
 * characters, its length and a SHA-256 prefix, enough to tell values apart and to grep for repeats.
 */
export function boundedLogValue(value: string): string {
  // Fast path: even if every character were escaped to 6 bytes it would fit.
  if (value.length * 6 <= LOG_FIELD_MAX_BYTES) return value;
  if (Buffer.byteLength(JSON.stringify(value)) <= LOG_FIELD_MAX_BYTES) return value;
  const digest = createHash('sha256').update(value).digest('hex').slice(0, 16);
  return `${value.slice(0, LOG_FIELD_KEEP_CHARS)}…[${value.length} chars, sha256 ${digest}…]`;
}

export async function startTelemetry(observability: GatewayConfig['observability']): Promise<Telemetry> {
  const logger = createLogger(observability);
  const endpoint = observability.otlpEndpoint;
  let stopSdk: () => Promise<void> = async () => {};
  if (endpoint !== undefined) {
    const [{ NodeSDK }, { OTLPTraceExporter }, { resourceFromAttributes }] = await Promise.all([
      import('@opentelemetry/sdk-node'),
      import('@opentelemetry/exporter-trace-otlp-grpc'),
      import('@opentelemetry/resources'),
    ]);
    const sdk = new NodeSDK({
      serviceName: SERVICE_NAME,
      resource: resourceFromAttributes({ 'service.name': SERVICE_NAME }),
      traceExporter: new OTLPTraceExporter({ url: endpoint }),
      // Spans are made by hand (one per CONNECT); auto-instrumentation would also trace every
      // registry query and upstream socket, which is noise at tunnel rates.
      instrumentations: [],
    });
    sdk.start();
    stopSdk = () => sdk.shutdown();
    logger.info({ otlp_endpoint: endpoint }, 'tracing enabled');
  }
  return {
    logger,
    tracer: trace.getTracer(SERVICE_NAME),
    async shutdown() {
      await stopSdk().catch((err: unknown) => logger.warn({ err }, 'trace exporter shutdown failed'));
      await new Promise<void>((resolve) => logger.flush(() => resolve()));
    },
  };
}

// Used directly rather than through the global propagator, so the caller's trace context is honoured
// even when tracing is off: the log line still carries the caller's trace_id.
const propagator = new W3CTraceContextPropagator();

/** Start the "gateway CONNECT" span as a child of the caller's W3C traceparent/tracestate, if any. */
export function startConnectSpan(tracer: Tracer, headers: Record<string, unknown>, peerAddr: string): Span {
  const parent = propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
  return tracer.startSpan(
    'gateway CONNECT',
    { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'CONNECT', 'client.address': peerAddr } },
    parent,
  );
}

/** The span's trace id for log correlation; undefined when there is neither a caller trace nor tracing. */
export function traceIdOf(span: Span): string | undefined {
  const ctx = span.spanContext();
  return isSpanContextValid(ctx) ? ctx.traceId : undefined;
}
