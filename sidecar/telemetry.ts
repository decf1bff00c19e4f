/**
 * JSON logs (pino, stdout) and optional OpenTelemetry tracing. Tracing is on exactly when
 * OTEL_EXPORTER_OTLP_ENDPOINT is set, as in the original sidecar: spans go out over OTLP gRPC and each
 * CONNECT to the gateway carries W3C trace context so the gateway's span joins the same trace.
 */
import {
  type Context,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';
import { pino } from 'pino';

export type Logger = pino.Logger;

export const SERVICE_NAME = 'agent_gateway_sidecar';

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: SERVICE_NAME, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}

export type Tracing = {
  readonly enabled: boolean;
  /** Flush pending spans; safe to call when tracing is off. */
  shutdown(): Promise<void>;
};

export async function startTracing(logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<Tracing> {
  const endpoint = env['OTEL_EXPORTER_OTLP_ENDPOINT']?.trim();
  if (endpoint === undefined || endpoint === '') return { enabled: false, shutdown: async () => {} };
  // Loaded only when tracing is on: the SDK and gRPC add about a second to start-up on a small machine.
  const [{ NodeSDK }, { OTLPTraceExporter }] = await Promise.all([
    import('@opentelemetry/sdk-node'),
    import('@opentelemetry/exporter-trace-otlp-grpc'),
  ]);
  const sdk = new NodeSDK({
    serviceName: SERVICE_NAME,
    traceExporter: new OTLPTraceExporter(),
    // Traces only: the SDK would otherwise also start OTLP metric and log exporters from defaults.
    metricReaders: [],
    logRecordProcessors: [],
    instrumentations: [],
  });
  sdk.start();
  logger.info({ otlp_endpoint: endpoint }, 'tracing enabled');
  return {
    enabled: true,
    shutdown: () =>
      sdk.shutdown().catch((err: unknown) => {
        logger.warn({ err }, 'flushing spans failed');
      }),
  };
}

/** One agent CONNECT as a client span, and the headers that carry it to the gateway. */
export type ConnectTrace = {
  readonly span: Span;
  /** `traceparent` (and `tracestate`) when tracing is on; empty otherwise. */
  readonly headers: Record<string, string>;
  /** Hex trace id for log correlation, undefined when tracing is off. */
  readonly traceId: string | undefined;
  end(outcome: { status?: number; error?: string }): void;
};

const tracer = () => trace.getTracer(SERVICE_NAME);

/**
 * Start the span for one CONNECT. An agent that itself sends `traceparent` on its CONNECT gets its trace
 * continued; otherwise the sidecar starts a new trace.
 */
export function startConnectTrace(
  tracing: Tracing,
  authority: string,
  agentHeaders: Record<string, string | string[] | undefined>,
): ConnectTrace {
  if (!tracing.enabled) {
    const span = trace.wrapSpanContext({ traceId: '', spanId: '', traceFlags: 0 });
    return { span, headers: {}, traceId: undefined, end: () => {} };
  }
  const parent: Context = propagation.extract(ROOT_CONTEXT, agentHeaders);
  const span = tracer().startSpan(
    'sidecar CONNECT',
    { kind: SpanKind.CLIENT, attributes: { 'http.request.method': 'CONNECT', 'server.address': authority } },
    parent,
  );
  const headers: Record<string, string> = {};
  propagation.inject(trace.setSpan(parent, span), headers);
  return {
    span,
    headers,
    traceId: span.spanContext().traceId,
    end: ({ status, error }) => {
      if (status !== undefined) span.setAttribute('http.response.status_code', status);
      if (error !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: error });
      span.end();
    },
  };
}
