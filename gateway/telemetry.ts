/**
 * Logs and traces. Log lines are JSON on stdout (SPEC §4 names the messages and fields); traces are
 * OTLP/gRPC and only exist when observability.otlp_endpoint is set, so the OpenTelemetry SDK (and gRPC)
 * is loaded on demand rather than paid for by every gateway.
 */
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

export type LoggerOptions = {
  /**
   * Write each line with its own synchronous write. Cluster workers share one stdout pipe: a line
   * written in one write() of at most PIPE_BUF bytes cannot interleave with another process's, whereas
   * asynchronous batches can be larger and split mid-line.
   */
  readonly sync?: boolean;
};

export function createLogger(
  observability: GatewayConfig['observability'],
  options: LoggerOptions = {},
): Logger {
  if (!observability.logStdout) return pino({ enabled: false });
  return pino(
    {
      level: observability.logLevel,
      base: { service: SERVICE_NAME, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Operators grep for "level":"warn", not 40.
      formatters: { level: (label) => ({ level: label }) },
    },
    // Otherwise asynchronous, without a minimum length: a line is written as soon as the previous write
    // completes, so tail -f sees it at once while bursts still coalesce.
    pino.destination({ dest: 1, sync: options.sync ?? false }),
  );
}

export async function startTelemetry(
  observability: GatewayConfig['observability'],
  options: LoggerOptions = {},
): Promise<Telemetry> {
  const logger = createLogger(observability, options);
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
