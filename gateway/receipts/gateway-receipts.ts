/**
 * Receipts as the rest of the gateway sees them (docs/contract.md "Receipts"): one object per serving
 * process, opened at start, told about every tunnel end and (with include_denied) every denial, asked
 * on every CONNECT whether new tunnels must be refused, closed with a stop checkpoint after the drain.
 */
import path from 'node:path';
import type { PeerIdentity } from '../../core/identity-extension.js';
import type { DecisionFields } from '../active-tunnel.js';
import type { DenyReason } from '../authorization.js';
import type { AuthorizationLogger } from '../registry-errors.js';
import { ReceiptLog, type ReceiptMetrics } from './receipt-log.js';
import { openReceiptSigner } from './receipt-signer.js';
import type { ReceiptsConfig } from './receipts-config.js';
import { deniedReceipt, type EndedTunnel, tunnelReceipt } from './tunnel-receipts.js';

export const WORKER_INDEX_ENV = 'AGENT_GATEWAY_WORKER_INDEX';
/** How long a shutdown waits for the writer's last batch, stop checkpoint and sync. */
const CLOSE_WAIT_MS = 10_000;

export class GatewayReceipts {
  constructor(
    private readonly log: ReceiptLog,
    private readonly config: ReceiptsConfig,
    private readonly logger: AuthorizationLogger,
    private readonly closeWaitMs = CLOSE_WAIT_MS,
  ) {}

  get gatewayId(): string {
    return this.log.gatewayId;
  }

  /** Why receipts cannot be written now, or undefined. */
  failing(): string | undefined {
    return this.log.failing;
  }

  /**
   * Set while failing with on_failure = "deny": new CONNECTs get 503 receipts_unavailable. Failing
   * includes a write, sync or signature that has not completed within STALLED_AFTER_MS and a queue at
   * max_queued (writer-health.ts): either way a new tunnel's receipt could be lost.
   */
  refusing(): string | undefined {
    return this.config.onFailure === 'deny' ? this.log.failing : undefined;
  }

  tunnelEnded(t: EndedTunnel): void {
    this.log.append(tunnelReceipt(t));
  }

  denied(fields: DecisionFields, peer: PeerIdentity | undefined, reason: DenyReason, detail: string): void {
    if (this.config.includeDenied) this.log.append(deniedReceipt(fields, peer, reason, detail));
  }

  /** `openTunnels`: tunnels the drain gave up on, which a `dropped` gap names before the stop. */
  close(openTunnels = 0): Promise<void> {
    // A write or a signature that never returns must not hold the shutdown forever; the next start
    // then finds no stop checkpoint and records an unclean stop, so nothing goes unnamed.
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.logger.error(
          { wait_ms: this.closeWaitMs },
          'receipts: the writer did not finish; stopping without the stop checkpoint',
        );
        resolve();
      }, this.closeWaitMs);
    });
    return Promise.race([this.log.close(openTunnels), deadline]).finally(() => clearTimeout(timer));
  }
}

/**
 * The chain's gateway id: instance_id, and in a cluster `-w<index>` with the worker's index (1..N, the
 * same across a respawn), so each worker has its own chain and directory.
 */
export function gatewayIdOf(config: ReceiptsConfig, workers: number, env: NodeJS.ProcessEnv): string {
  if (workers <= 1) return config.instanceId;
  const index = env[WORKER_INDEX_ENV];
  if (index === undefined || !/^[1-9][0-9]*$/.test(index)) {
    throw new Error(`${WORKER_INDEX_ENV} is not set to a worker index (the cluster primary sets it)`);
  }
  return `${config.instanceId}-w${index}`;
}

/**
 * Undefined when receipts are off. A key that cannot be used throws ReceiptKeyError (a startup error);
 * a directory that cannot be written does not: the log starts failing and retries.
 */
export async function openReceipts(
  config: ReceiptsConfig,
  workers: number,
  env: NodeJS.ProcessEnv,
  metrics: ReceiptMetrics,
  logger: AuthorizationLogger,
): Promise<GatewayReceipts | undefined> {
  if (!config.enabled) return undefined;
  const gatewayId = gatewayIdOf(config, workers, env);
  const signer = await openReceiptSigner(config.signingKey as string, env);
  const log = await ReceiptLog.open({
    dir: path.join(config.path, gatewayId),
    gatewayId,
    signer,
    checkpointReceipts: config.checkpointReceipts,
    checkpointIntervalMs: config.checkpointIntervalMs,
    fsyncIntervalMs: config.fsyncIntervalMs,
    rotateBytes: config.rotateBytes,
    rotateIntervalMs: config.rotateIntervalS * 1000,
    maxQueued: config.maxQueued,
    metrics,
    logger,
  });
  logger.info(
    {
      gateway: gatewayId,
      dir: path.join(config.path, gatewayId),
      key_id: signer.keyId,
      failing: log.failing ?? null,
    },
    'receipts: writing',
  );
  return new GatewayReceipts(log, config, logger);
}
