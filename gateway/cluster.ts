/**
 * server.workers > 1: a primary that serves nothing itself, and N workers that each run the whole
 * gateway on the shared listening port (node:cluster). The primary checks what it can before forking
 * (TLS material, registry schema) so a bad deployment fails once with one message, relays signals as
 * IPC messages, restarts a worker that dies, and serves the admin endpoint with every worker's metrics
 * summed (prom-client AggregatorRegistry).
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import { errorText } from '../core/error-text.js';
import { latestKnownVersion } from '../core/migrate.js';
import { type AdminServer, startAdminServer } from './admin-server.js';
import type { GatewayConfig } from './config.js';
import { GatewayStartupError, type RunningGateway } from './gateway.js';
import type { GatewayMetrics } from './metrics.js';
import { WORKER_INDEX_ENV } from './receipts/gateway-receipts.js';
import { Registry, RegistrySchemaError } from './registry.js';
import { loadTlsMaterial } from './server.js';
import type { Logger } from './telemetry.js';

export type ToWorker =
  | { type: 'agent_gateway:reload' }
  | { type: 'agent_gateway:drain' }
  | { type: 'agent_gateway:force' };
export type ToPrimary =
  | { type: 'agent_gateway:listening'; address: string }
  /** Receipts state changed: why new CONNECTs are refused, or null (docs/contract.md "Receipts"). */
  | { type: 'agent_gateway:receipts'; refusing: string | null }
  | { type: 'agent_gateway:startup_failed'; message: string; exitCode: number };

const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
const RESTART_DELAY_MS = 1_000;
/** Beyond drain_timeout_ms, how long workers get to exit before they are killed. */
const EXIT_GRACE_MS = 10_000;
/** How often a worker looks at its receipts state to tell the primary of a change. */
const RECEIPTS_REPORT_MS = 1_000;

/** This worker's share of limits.max_connections (the limit is for the whole gateway). */
export function perWorkerConnections(config: GatewayConfig): number {
  return Math.max(1, Math.ceil(config.limits.maxConnections / config.server.workers));
}

/** Runs until every worker has exited after a drain; resolves with the process exit code. */
export async function runPrimary(config: GatewayConfig, logger: Logger): Promise<number> {
  try {
    loadTlsMaterial(config.server.tlsCertPath, config.server.tlsKeyPath);
  } catch (err) {
    throw new GatewayStartupError(`cannot load TLS material: ${errorText(err)}`);
  }
  // A small pool of its own: the schema check now, /readyz pings later.
  const registry = new Registry({
    databaseUrl: config.policy.databaseUrl,
    // Only for /readyz: with the primary gone, a replica that answers makes it "degraded", not unready.
    replicaDatabaseUrls: config.policy.replicaDatabaseUrls,
    maxConnections: 1,
    connectTimeoutMs: config.policy.connectTimeoutMs,
    poolAcquireTimeoutMs: config.policy.poolAcquireTimeoutMs,
    queryTimeoutMs: config.policy.queryTimeoutMs,
    latestKnownVersion: latestKnownVersion(),
    logger,
    applicationName: 'agent_gateway_primary',
  });
  try {
    await registry.checkSchema();
  } catch (err) {
    await registry.close();
    if (err instanceof RegistrySchemaError) throw new GatewayStartupError(err.message);
    throw new GatewayStartupError(`cannot check the registry schema: ${errorText(err)}`);
  }
  return new Primary(config, logger, registry).run();
}

class Primary {
  private readonly listening = new Set<Worker>();
  /** Each worker's index (1..N): its receipt chain's `-w<index>`, handed on to its replacement. */
  private readonly indexes = new Map<Worker, number>();
  /** Workers whose receipts refuse new CONNECTs, with why. */
  private readonly receiptsRefusing = new Map<Worker, string>();
  private readonly restarts: number[] = [];
  private draining = false;
  private startupDone = false;
  private admin: AdminServer | undefined;
  private resolveExit!: (code: number) => void;
  private exitCode = 0;

  constructor(
    private readonly config: GatewayConfig,
    private readonly logger: Logger,
    private readonly registry: Registry,
  ) {}

  async run(): Promise<number> {
    const exited = new Promise<number>((resolve) => {
      this.resolveExit = resolve;
    });
    cluster.on('message', (worker, message: ToPrimary) => this.onMessage(worker, message));
    cluster.on('exit', (worker, code, signal) => this.onExit(worker, code, signal));
    for (let i = 1; i <= this.config.server.workers; i++) this.fork(i);

    process.on('SIGHUP', () => this.broadcast({ type: 'agent_gateway:reload' }));
    let signals = 0;
    const stop = (signal: NodeJS.Signals) => {
      signals++;
      if (signals === 1) {
        this.logger.info({ signal }, 'shutdown requested; draining workers');
        this.drain();
      } else {
        this.logger.warn({ signal }, 'second signal; resetting open tunnels');
        this.broadcast({ type: 'agent_gateway:force' });
      }
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);

    const code = await exited;
    await this.admin?.close();
    await this.registry.close();
    return code;
  }

  private fork(index: number): void {
    this.indexes.set(cluster.fork({ [WORKER_INDEX_ENV]: String(index) }), index);
  }

  private onMessage(worker: Worker, message: ToPrimary): void {
    if (message?.type === 'agent_gateway:listening') {
      this.listening.add(worker);
      if (!this.startupDone && this.listening.size === this.config.server.workers) {
        this.startupDone = true;
        void this.startAdmin(message.address);
      }
    } else if (message?.type === 'agent_gateway:receipts') {
      if (message.refusing === null) this.receiptsRefusing.delete(worker);
      else this.receiptsRefusing.set(worker, message.refusing);
    } else if (message?.type === 'agent_gateway:startup_failed') {
      // Every worker would fail the same way: stop now with the worker's message and exit code.
      if (!this.startupDone && !this.draining) {
        process.stderr.write(`agent_gateway: ${message.message}\n`);
        this.exitCode = message.exitCode;
        this.drain();
      }
    }
  }

  private async startAdmin(address: string): Promise<void> {
    if (this.draining) return;
    const listenAddr = this.config.admin.listenAddr;
    if (listenAddr !== undefined) {
      const aggregator = new AggregatorRegistry();
      const clusterMetrics = {
        registry: { metrics: () => aggregator.clusterMetrics(), contentType: aggregator.contentType },
      } as unknown as Pick<GatewayMetrics, 'registry'>;
      try {
        this.admin = await startAdminServer({
          listenAddr,
          metrics: clusterMetrics,
          pingRegistry: () => this.registry.ping(),
          isAccepting: () => this.listening.size > 0 && !this.draining,
          isDraining: () => this.draining,
          receiptsRefusing: this.config.receipts.enabled ? () => this.receiptsRefused() : undefined,
          logger: this.logger,
        });
      } catch (err) {
        process.stderr.write(
          `agent_gateway: cannot listen on admin address ${listenAddr.host}:${listenAddr.port}: ${errorText(err)}\n`,
        );
        this.exitCode = 1;
        this.drain();
        return;
      }
    }
    this.logger.info({ listen_addr: address, workers: this.config.server.workers }, 'gateway listening');
  }

  private receiptsRefused(): string | undefined {
    const [first] = this.receiptsRefusing.values();
    if (first === undefined) return undefined;
    return `${this.receiptsRefusing.size} of ${this.config.server.workers} workers: ${first}`;
  }

  private onExit(worker: Worker, code: number | null, signal: string | null): void {
    this.listening.delete(worker);
    this.receiptsRefusing.delete(worker);
    const index = this.indexes.get(worker) as number;
    this.indexes.delete(worker);
    const alive = Object.keys(cluster.workers ?? {}).length;
    if (this.draining) {
      if (code !== 0 && this.exitCode === 0) this.exitCode = code ?? 1;
      if (alive === 0) this.resolveExit(this.exitCode);
      return;
    }
    this.logger.error({ worker_pid: worker.process.pid, code, signal }, 'worker exited unexpectedly');
    if (!this.startupDone) {
      // Died before listening without saying why (crash during startup).
      if (this.exitCode === 0) this.exitCode = code || 1;
      this.drain();
      if (alive === 0) this.resolveExit(this.exitCode);
      return;
    }
    const now = Date.now();
    while (this.restarts.length > 0 && now - (this.restarts[0] as number) > RESTART_WINDOW_MS)
      this.restarts.shift();
    if (this.restarts.length >= MAX_RESTARTS) {
      this.logger.fatal({ restarts: this.restarts.length }, 'workers keep dying; shutting down');
      this.exitCode = 1;
      this.drain();
      if (alive === 0) this.resolveExit(this.exitCode);
      return;
    }
    this.restarts.push(now);
    setTimeout(() => {
      if (!this.draining) this.fork(index);
    }, RESTART_DELAY_MS).unref();
  }

  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    this.broadcast({ type: 'agent_gateway:drain' });
    const workers = Object.values(cluster.workers ?? {});
    if (workers.length === 0) {
      this.resolveExit(this.exitCode);
      return;
    }
    setTimeout(() => {
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
    }, this.config.server.drainTimeoutMs + EXIT_GRACE_MS).unref();
  }

  private broadcast(message: ToWorker): void {
    for (const worker of Object.values(cluster.workers ?? {})) {
      if (worker?.isConnected()) worker.send(message);
    }
  }
}

/** Worker side: report listening, obey the primary's messages, and leave if the primary is gone. */
export function attachWorker(gateway: RunningGateway, logger: Logger, exit: () => void): void {
  process.send?.({
    type: 'agent_gateway:listening',
    address: `${gateway.address.address}:${gateway.address.port}`,
  } satisfies ToPrimary);
  process.on('message', (message: ToWorker) => {
    switch (message?.type) {
      case 'agent_gateway:reload':
        gateway.reloadTls();
        gateway.reloadTrustRoots();
        break;
      case 'agent_gateway:drain':
        exit();
        break;
      case 'agent_gateway:force':
        gateway.forceClose();
        break;
    }
  });
  let refusing: string | undefined;
  const reportReceipts = () => {
    const now = gateway.receiptsRefusing();
    if (now === refusing || !process.connected) return;
    refusing = now;
    process.send?.({ type: 'agent_gateway:receipts', refusing: now ?? null } satisfies ToPrimary);
  };
  reportReceipts();
  setInterval(reportReceipts, RECEIPTS_REPORT_MS).unref();
  process.on('disconnect', () => {
    logger.warn('primary process went away; draining');
    exit();
  });
}

export function reportStartupFailure(message: string, exitCode: number): Promise<void> {
  return new Promise((resolve) => {
    if (process.send === undefined || !process.connected) {
      resolve();
      return;
    }
    process.send({ type: 'agent_gateway:startup_failed', message, exitCode } satisfies ToPrimary, () =>
      resolve(),
    );
  });
}
