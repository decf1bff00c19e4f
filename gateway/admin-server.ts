/**
 * Plain-HTTP operations endpoint: /healthz (the process answers), /readyz (it should get traffic),
 * /metrics (Prometheus). Meant for loopback or a private network; it reveals counts, never identities.
 * Requests are tiny GETs, so everything else is cut short: bodies are not read, sockets get short
 * timeouts, and readiness probes share one in-flight registry ping so a probe storm is one query.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { errorText } from '../core/error-text.js';
import type { HostPort } from './config.js';
import type { RevocationState } from './live-revocation.js';
import type { GatewayMetrics } from './metrics.js';
import type { AuthorizationLogger, PingResult } from './registry.js';
import { silentLogger } from './registry.js';

export type AdminServerOptions = {
  readonly listenAddr: HostPort;
  readonly metrics: Pick<GatewayMetrics, 'registry'>;
  /** Registry.ping(): round trip + acceptable schema version. Must not throw. */
  readonly pingRegistry: () => Promise<PingResult>;
  /** True while the TLS listener accepts connections (request path). */
  readonly isAccepting: () => boolean;
  /** True once graceful drain has begun (SIGTERM). */
  readonly isDraining: () => boolean;
  /** Live revocation state; reported, not gating (polling still revokes, just later). */
  readonly revocationState?: (() => RevocationState) | undefined;
  /**
   * Why new CONNECTs are refused for want of receipts (receipts.on_failure = "deny"), or undefined;
   * absent = receipts off.
   */
  readonly receiptsRefusing?: (() => string | undefined) | undefined;
  readonly logger?: AuthorizationLogger | undefined;
  /** A registry ping slower than this counts as failed. */
  readonly pingTimeoutMs?: number | undefined;
};

export type AdminServer = {
  /** Actual bound address (port resolved when 0 was asked for). */
  readonly address: HostPort;
  close(): Promise<void>;
};

type ReadinessCheck = { ok: boolean; detail?: string };

export async function startAdminServer(opts: AdminServerOptions): Promise<AdminServer> {
  const logger = opts.logger ?? silentLogger;
  const pingTimeoutMs = opts.pingTimeoutMs ?? 2000;
  let inflightPing: Promise<PingResult> | undefined;

  const ping = (): Promise<PingResult> => {
    if (inflightPing === undefined) {
      inflightPing = withTimeout(opts.pingRegistry(), pingTimeoutMs).finally(() => {
        inflightPing = undefined;
      });
    }
    return inflightPing;
  };

  const readiness = async (): Promise<{ ready: boolean; body: Record<string, unknown> }> => {
    const registry = await ping();
    const checks: Record<string, ReadinessCheck> = {
      registry: registry.ok ? { ok: true } : { ok: false, detail: registry.error },
      listener: opts.isAccepting() ? { ok: true } : { ok: false, detail: 'not accepting connections' },
      draining: opts.isDraining() ? { ok: false, detail: 'draining' } : { ok: true },
    };
    if (opts.receiptsRefusing !== undefined) {
      const refusing = opts.receiptsRefusing();
      checks['receipts'] = refusing === undefined ? { ok: true } : { ok: false, detail: refusing };
    }
    const failing = Object.entries(checks)
      .filter(([, c]) => !c.ok)
      .map(([name]) => name);
    // Degraded is still ready: the balancer must keep sending agents to a gateway that can authorize them.
    const degraded = registry.ok ? registry.degraded : undefined;
    const status = failing.length > 0 ? 'not_ready' : degraded !== undefined ? 'degraded' : 'ready';
    const body: Record<string, unknown> = { status, checks };
    if (failing.length > 0) body['failing'] = failing;
    if (degraded !== undefined) body['degraded'] = degraded;
    if (registry.ok) body['schema_version'] = registry.version;
    const revocation = opts.revocationState?.();
    if (revocation !== undefined) {
      body['revocation'] = { mode: revocation.mode, open_tunnels: revocation.openTunnels };
    }
    return { ready: failing.length === 0, body };
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // The body is never needed; discard it instead of buffering whatever a client sends.
    req.resume();
    const path = (req.url ?? '/').split('?', 1)[0];
    const isGet = req.method === 'GET' || req.method === 'HEAD';
    if (path !== '/healthz' && path !== '/readyz' && path !== '/metrics') {
      return send(res, 404, { error: 'not found' });
    }
    if (!isGet) {
      res.setHeader('allow', 'GET, HEAD');
      return send(res, 405, { error: 'method not allowed' });
    }
    if (path === '/healthz') return send(res, 200, { status: 'ok' });
    if (path === '/readyz') {
      const { ready, body } = await readiness();
      return send(res, ready ? 200 : 503, body);
    }
    const text = await opts.metrics.registry.metrics();
    res.writeHead(200, {
      'content-type': opts.metrics.registry.contentType,
      'cache-control': 'no-store',
      'content-length': Buffer.byteLength(text),
    });
    res.end(req.method === 'HEAD' ? undefined : text);
  };

  const server: Server = createServer(
    {
      requestTimeout: 5_000,
      headersTimeout: 5_000,
      keepAliveTimeout: 5_000,
      maxHeaderSize: 8 * 1024,
    },
    (req, res) => {
      handle(req, res).catch((err: unknown) => {
        logger.error({ err: errorText(err) }, 'admin request failed');
        if (!res.headersSent) send(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    },
  );
  server.timeout = 10_000;
  server.maxRequestsPerSocket = 100;
  server.on('clientError', (_err, socket) => socket.destroy());

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: opts.listenAddr.host, port: opts.listenAddr.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => logger.error({ err: errorText(err) }, 'admin server error'));
  const bound = server.address() as AddressInfo;
  logger.info({ admin_addr: `${bound.address}:${bound.port}` }, 'admin server listening');

  return {
    address: { host: bound.address, port: bound.port },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function withTimeout(p: Promise<PingResult>, ms: number): Promise<PingResult> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ ok: false, error: `registry ping exceeded ${ms} ms` }), ms);
    p.then(
      (r) => {
        clearTimeout(timer);
        resolve(r);
      },
      (err: unknown) => {
        clearTimeout(timer);
        resolve({ ok: false, error: errorText(err) });
      },
    );
  });
}
