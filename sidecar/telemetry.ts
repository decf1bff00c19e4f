/**
 * JSON logs (pino, stdout) and optional OpenTelemetry tracing. Tracing is on exactly when
 * OTEL_EXPORTER_OTLP_ENDPOINT is set, as in the original sidecar: spans go out over OTLP gRPC and each
 * CONNECT to the gateway carries W3C trace context so the gateway's span joins the same trace.
 */
import { pino } from 'pino';

/** The OpenTelemetry API, loaded with the SDK: a sidecar without tracing never has it in memory. */
type OtelApi = typeof import('@opentelemetry/api');

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

export type Tracing = ({ readonly enabled: false } | { readonly enabled: true; readonly api: OtelApi }) & {
  /** Flush pending spans; safe to call when tracing is off. */
  shutdown(): Promise<void>;
};

export async function startTracing(logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<Tracing> {
  const endpoint = env['OTEL_EXPORTER_OTLP_ENDPOINT']?.trim();
  if (endpoint === undefined || endpoint === '') return { enabled: false, shutdown: async () => {} };
  // Loaded only when tracing is on: the SDK and gRPC add about a second to start-up on a small machine.
  const [api, { NodeSDK }, { OTLPTraceExporter }] = await Promise.all([
    import('@opentelemetry/api'),
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
    api,
    shutdown: () =>
      sdk.shutdown().catch((err: unknown) => {
        logger.warn({ err }, 'flushing spans failed');
      }),
  };
}

/** One agent CONNECT as a client span, and the headers that carry it to the gateway. */
export type ConnectTrace = {
  /** `traceparent` (and `tracestate`) when tracing is on; empty otherwise. */
  readonly headers: Record<string, string>;
  /** Hex trace id for log correlation, undefined when tracing is off. */
  readonly traceId: string | undefined;
  end(outcome: { status?: number; error?: string }): void;
};

// Shared by every untraced CONNECT; frozen so no caller can leak a header into the next one.
const UNTRACED: ConnectTrace = Object.freeze({
  headers: Object.freeze({}),
  traceId: undefined,
  end: () => {},
});

/**
 * Start the span for one CONNECT. An agent that itself sends `traceparent` on its CONNECT gets its trace
 * continued; otherwise the sidecar starts a new trace.
 */
export function startConnectTrace(
  tracing: Tracing,
  authority: string,
  agentHeaders: Record<string, string | string[] | undefined>,
): ConnectTrace {
  if (!tracing.enabled) return UNTRACED;
  const { propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } = tracing.api;
  const parent = propagation.extract(ROOT_CONTEXT, agentHeaders);
  const span = trace.getTracer(SERVICE_NAME).startSpan(
    'sidecar CONNECT',
    {
      kind: SpanKind.CLIENT,
      attributes: { 'http.request.method': 'CONNECT', 'server.address': authority },
    },
    parent,
  );
  const headers: Record<string, string> = {};
  propagation.inject(trace.setSpan(parent, span), headers);
  return {
    headers,
    traceId: span.spanContext().traceId,
    end: ({ status, error }) => {
      if (status !== undefined) span.setAttribute('http.response.status_code', status);
      if (error !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: error });
      span.end();
    },
  };
}
