/**
 * Wires one serving process: registry → authorizer → live revocation → limits → dialer → handler →
 * server (+ admin endpoint when this process owns it). Startup failures are GatewayStartupError with the exit
 * code main should use; everything after startup is the running gateway's business.
 */
import type { AddressInfo } from 'node:net';
import { ACCESS_REQUESTS_SCHEMA_VERSION } from '../core/access-request-id.js';
import { errorText } from '../core/error-text.js';
import { latestKnownVersion } from '../core/migrate.js';
import { AccessRequestHold } from './access-request-hold.js';
import { AccessRequests } from './access-requests.js';
import { AddressGuard } from './address-guard.js';
import { AddressLimits } from './address-limits.js';
import { type AdminServer, startAdminServer } from './admin-server.js';
import { RegistryAuthorizer } from './authorizer.js';
import type { GatewayConfig } from './config.js';
import { ConnectHandler } from './connect-handler.js';
import { limitsFromConfig } from './limits.js';
import { LiveRevocation } from './live-revocation.js';
import { type GatewayMetrics, metrics as processMetrics } from './metrics.js';
import { ObserveRule } from './observe-identities.js';
import { type GatewayReceipts, openReceipts } from './receipts/gateway-receipts.js';
import { ReceiptKeyError } from './receipts/receipt-signer.js';
import { Registry, RegistrySchemaError, RegistryUnavailableError } from './registry.js';
import { EVERYTHING } from './registry-changes.js';
import { GatewayServer } from './server.js';
import type { Telemetry } from './telemetry.js';
import { ROOT_SCHEMA_VERSION, TrustRootsInForce } from './trust-roots-reload.js';
import { UpstreamDialer } from './upstream-dialer.js';

export class GatewayStartupError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'GatewayStartupError';
  }
}

export type RunningGateway = {
  readonly address: AddressInfo;
  readonly adminAddress: string | undefined;
  /** SIGHUP: re-read the TLS certificate and key; false (old kept) when they are bad. */
  reloadTls(): boolean;
  /**
   * SIGHUP: re-read policy.trust_roots / trust_root_files from the config file; false (old roots kept,
   * error logged) when the file is bad. A change re-checks every open tunnel.
   */
  reloadTrustRoots(): boolean;
  /** SIGTERM: stop accepting, finish open tunnels up to drain_timeout_ms, then release everything. */
  shutdown(): Promise<void>;
  /** Second signal: reset what is still open; shutdown() then completes promptly. */
  forceClose(): void;
  isDraining(): boolean;
  /** Why new CONNECTs are refused for want of receipts (on_failure = "deny"), or undefined. */
  receiptsRefusing(): string | undefined;
};

export type StartOptions = {
  /** Serve /healthz /readyz /metrics from this process (false in cluster workers: the primary does). */
  readonly admin: boolean;
  /** This process's share of limits.max_connections. */
  readonly maxConnections?: number;
  readonly metrics?: GatewayMetrics;
};

export async function startGateway(
  config: GatewayConfig,
  telemetry: Telemetry,
  options: StartOptions,
): Promise<RunningGateway> {
  const { logger } = telemetry;
  const metrics = options.metrics ?? processMetrics;
  const registry = new Registry({
    databaseUrl: config.policy.databaseUrl,
    replicaDatabaseUrls: config.policy.replicaDatabaseUrls,
    maxConnections: config.policy.maxConnections,
    maxLookupsInFlight: config.policy.maxLookupsInFlight,
    recheckConnections: config.policy.recheckConnections,
    recheckQueryTimeoutMs: config.policy.recheckQueryTimeoutMs,
    connectTimeoutMs: config.policy.connectTimeoutMs,
    poolAcquireTimeoutMs: config.policy.poolAcquireTimeoutMs,
    queryTimeoutMs: config.policy.queryTimeoutMs,
    latestKnownVersion: latestKnownVersion(),
    metrics,
    logger,
  });
  const cleanup: (() => Promise<void>)[] = [() => registry.close()];
  const unwind = async () => {
    for (const fn of cleanup.reverse()) await fn().catch(() => {});
  };

  try {
    const schema = await checkSchema(registry);
    logger.info({ schema_version: schema.version }, 'registry schema accepted');
    const roots = new TrustRootsInForce(config, logger);
    if (config.policy.trustRoots.size > 0 && schema.version < ROOT_SCHEMA_VERSION) {
      throw new GatewayStartupError(
        `policy.trust_roots is set but the registry schema version is ${schema.version}: root signatures need version ${ROOT_SCHEMA_VERSION} (run the migrations: agent_gateway_registry migrate)`,
      );
    }
    await registry.warm();
    const requests = accessRequests(config, schema.version, registry, metrics, logger);
    if (requests !== undefined) cleanup.push(() => requests.close());

    const authorizer = new RegistryAuthorizer({
      registry,
      cacheMaxEntries: config.policy.decisionCacheMaxEntries,
      cacheTtlMs: config.policy.decisionCacheTtlMs,
      denialTtlMs: config.policy.denialCacheTtlMs,
      metrics,
      logger,
      trustRoots: config.policy.trustRoots,
      observe: new ObserveRule(config.policy.observeIdentities, registry),
      receipts: config.receipts.enabled,
    });
    const hold = holdFromConfig(
      config,
      authorizer,
      registry,
      () => revocation.state().listenerUp,
      metrics,
      logger,
    );
    const revocation = new LiveRevocation({
      authorizer,
      clientConfig: registry.clientConfig('agent_gateway_listen'),
      notifications: schema.notifications,
      recheckIntervalMs: config.policy.revocationRecheckIntervalMs,
      fullRecheckIntervalMs: config.policy.revocationFullRecheckIntervalMs,
      unavailableGraceMs: config.policy.recheckUnavailableGraceMs,
      recheckConcurrency: config.policy.recheckConnections,
      heartbeatTimeoutMs: config.policy.queryTimeoutMs + 1000,
      metrics,
      logger,
      onChange: (change) => {
        // First, in the notification's own turn: no lookup may start on a replica with the old position.
        registry.registryChanged();
        hold?.onRegistryChange(change);
      },
    });
    registry.setListening(() => revocation.state().listenerUp);
    cleanup.push(() => revocation.close());
    await revocation.start();

    const receipts = await receiptsFromConfig(config, metrics, logger);
    // Set by shutdown once the wait for tunnels is over: those still open never get their receipt.
    let unendedTunnels = 0;
    if (receipts !== undefined) cleanup.push(() => receipts.close(unendedTunnels));

    let server: GatewayServer | undefined;
    const addressLimits = new AddressLimits({ ...config.limits, metrics });
    const handler = new ConnectHandler({
      authorizer,
      tracker: revocation,
      limits: limitsFromConfig(config.limits, metrics),
      addressBudget: addressLimits,
      dialer: new UpstreamDialer({
        guard: new AddressGuard(config.upstream.denyCidrs, config.upstream.allowCidrs),
        overrides: config.upstream.overrides,
        connectTimeoutMs: config.upstream.connectTimeoutMs,
        recordDialled: config.receipts.enabled,
      }),
      metrics,
      logger,
      tracer: telemetry.tracer,
      tunnelIdleTimeoutMs: config.upstream.tunnelIdleTimeoutMs,
      isDraining: () => server?.isDraining ?? false,
      requests,
      hold,
      receipts,
    });
    try {
      server = new GatewayServer({
        config,
        handler,
        metrics,
        logger,
        addressLimits,
        maxConnections: options.maxConnections,
      });
    } catch (err) {
      throw new GatewayStartupError(`cannot load TLS material: ${errorText(err)}`);
    }
    const gatewayServer = server;

    let address: AddressInfo;
    try {
      address = await gatewayServer.listen();
    } catch (err) {
      const { host, port } = config.server.listenAddr;
      throw new GatewayStartupError(`cannot listen on ${host}:${port}: ${errorText(err)}`);
    }

    let admin: AdminServer | undefined;
    if (options.admin && config.admin.listenAddr !== undefined) {
      try {
        admin = await startAdminServer({
          listenAddr: config.admin.listenAddr,
          metrics,
          pingRegistry: () => registry.ping(),
          isAccepting: () => !gatewayServer.isDraining,
          isDraining: () => gatewayServer.isDraining,
          revocationState: () => revocation.state(),
          receiptsRefusing: receipts === undefined ? undefined : () => receipts.refusing(),
          logger,
        });
      } catch (err) {
        gatewayServer.forceClose();
        await gatewayServer.drain(0);
        const { host, port } = config.admin.listenAddr;
        throw new GatewayStartupError(`cannot listen on admin address ${host}:${port}: ${errorText(err)}`);
      }
      const adminServer = admin;
      cleanup.push(() => adminServer.close());
    }

    logger.info(
      {
        listen_addr: `${address.address}:${address.port}`,
        admin_addr: admin === undefined ? null : `${admin.address.host}:${admin.address.port}`,
        tls_subject: gatewayServer.certificate.subject,
        tls_not_after: gatewayServer.certificate.notAfter,
      },
      // In a cluster the primary announces "gateway listening" once every worker is up.
      options.admin ? 'gateway listening' : 'worker listening',
    );

    let shuttingDown: Promise<void> | undefined;
    return {
      address,
      adminAddress: admin === undefined ? undefined : `${admin.address.host}:${admin.address.port}`,
      reloadTls: () => gatewayServer.reloadTls(),
      reloadTrustRoots: () =>
        roots.reload((next) => {
          authorizer.setTrustRoots(next);
          revocation.handleChange(EVERYTHING);
        }),
      isDraining: () => gatewayServer.isDraining,
      receiptsRefusing: () => receipts?.refusing(),
      forceClose: () => gatewayServer.forceClose(),
      shutdown() {
        shuttingDown ??= (async () => {
          // The admin server stays up during drain so /readyz can report it (503) to the balancer.
          const drained = gatewayServer.drain(config.server.drainTimeoutMs);
          // Held CONNECTs get their denial now rather than waiting out hold_ms (Access requests).
          hold?.drain();
          await drained;
          if (receipts !== undefined) {
            await tunnelsEnded(handler, TUNNEL_END_WAIT_MS);
            unendedTunnels = handler.openTunnels;
          }
          // After the drain, so the stop checkpoint follows every tunnel's receipt (unwind closes it).
          await unwind();
        })();
        return shuttingDown;
      },
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}

/**
 * The access-request recorder, or undefined when requests.enabled is off or the registry predates
 * migrations/0007: then denials are answered as before, without a request id (docs/contract.md
 * "Access requests").
 */
function accessRequests(
  config: GatewayConfig,
  schemaVersion: number,
  registry: Registry,
  metrics: GatewayMetrics,
  logger: Telemetry['logger'],
): AccessRequests | undefined {
  const { enabled, maxPending, ratePerIdentity, flushIntervalMs, dismissQuietHours } = config.requests;
  if (!enabled) return undefined;
  if (schemaVersion < ACCESS_REQUESTS_SCHEMA_VERSION) {
    logger.info(
      { schema_version: schemaVersion, required: ACCESS_REQUESTS_SCHEMA_VERSION },
      'access requests are not recorded: the registry has no access_requests table (run the migrations: agent_gateway_registry migrate)',
    );
    return undefined;
  }
  return new AccessRequests({
    registry,
    maxPending,
    ratePerIdentity,
    flushIntervalMs,
    dismissQuietHours,
    metrics,
    logger,
  });
}

/** After a drain, how long tunnels whose stream is gone get for their upstream socket's close. */
const TUNNEL_END_WAIT_MS = 2000;

/** Resolves once `handler` has no open tunnel (each has told its receipt), or after `ms`. */
async function tunnelsEnded(handler: ConnectHandler, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (handler.openTunnels > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Receipts, or undefined when [receipts] is off. A key that cannot be used stops the start (exit 1,
 * naming receipts.signing_key); a directory that cannot be written does not (docs/contract.md "Receipts").
 */
async function receiptsFromConfig(
  config: GatewayConfig,
  metrics: GatewayMetrics,
  logger: Telemetry['logger'],
): Promise<GatewayReceipts | undefined> {
  try {
    return await openReceipts(config.receipts, config.server.workers, process.env, metrics, logger);
  } catch (err) {
    if (err instanceof ReceiptKeyError) throw new GatewayStartupError(err.message);
    throw new GatewayStartupError(`cannot start receipts: ${errorText(err)}`);
  }
}

/** Hold mode, or undefined when requests.hold_ms is 0 (docs/contract.md "Access requests"). */
function holdFromConfig(
  config: GatewayConfig,
  authorizer: RegistryAuthorizer,
  registry: Registry,
  listening: () => boolean,
  metrics: GatewayMetrics,
  logger: Telemetry['logger'],
): AccessRequestHold | undefined {
  const { holdMs, maxHeld, maxHeldPerIdentity } = config.requests;
  if (holdMs === 0) return undefined;
  return new AccessRequestHold({
    holdMs,
    maxHeld,
    maxHeldPerIdentity,
    authorizer,
    registry,
    listening,
    metrics,
    logger,
  });
}

async function checkSchema(registry: Registry): Promise<{ version: number; notifications: boolean }> {
  try {
    return await registry.checkSchema();
  } catch (err) {
    if (err instanceof RegistrySchemaError) throw new GatewayStartupError(err.message);
    if (err instanceof RegistryUnavailableError) {
      throw new GatewayStartupError(`cannot check the registry schema: ${errorText(err)}`);
    }
    throw err;
  }
}
