/**
 * An open tunnel after its 200: what live revocation, limits, metrics and the "tunnel closed" line see of
 * it. The stream's way there (checks, authorization, dial) is connect-handler.ts.
 */
import type { ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import type { DenyReason, Grant, LiveTunnel } from './authorization.js';
import type { ConnectHandlerDeps } from './connect-handler.js';
import type { ByteTotals } from './metrics.js';
import { receiptMicros } from './receipts/receipt-time.js';
import type { Logger } from './telemetry.js';
import { Tunnel, type TunnelEndReason, type TunnelOwner } from './tunnel.js';

/**
 * A "CONNECT allowed" line not yet written: policy and guard agreed, and the line waits for the outcome.
 * The tunnel writes it after its 200; connect-handler.ts writes it before a 502 or an abandoned dial.
 */
export type AllowedLine = {
  readonly fields: DecisionFields;
  readonly grant: Grant;
  readonly cached: boolean;
  /** The access request an observed CONNECT recorded (observe mode). */
  readonly requestId?: string | undefined;
};

/** Fields every decision line carries; the first five are the original system's. */
export type DecisionFields = {
  source_identity: string | null;
  source_peer_addr: string;
  dest_authority: string;
  destination?: string;
  trace_id?: string;
};

/** The "CONNECT allowed" decision line (docs/contract.md "CONNECT: answers and log lines"). */
export function logAllowed(logger: Logger, line: AllowedLine): void {
  const observed = line.grant.observedDenyReason;
  if (observed !== undefined) {
    // Observe mode: allowed with no grant (docs/contract.md "Access requests", observe mode).
    logger.info(
      {
        ...line.fields,
        policy_decision: 'observe',
        deny_reason: null,
        observed_deny_reason: observed,
        permission_id: null,
        signing_key_id: null,
        request_id: line.requestId ?? null,
        decision_cached: line.cached,
      },
      'CONNECT allowed',
    );
    return;
  }
  logger.info(
    {
      ...line.fields,
      policy_decision: 'allow',
      deny_reason: null,
      permission_id: line.grant.permissionId,
      signing_key_id: line.grant.signingKeyId,
      decision_cached: line.cached,
    },
    'CONNECT allowed',
  );
}

let tunnelSeq = 0;

/** The open tunnel as live revocation, limits, metrics and the close log line see it. */
export class ActiveTunnel implements LiveTunnel, TunnelOwner {
  readonly id = `${process.pid}.${++tunnelSeq}`;
  readonly peerAddr: string;
  private tunnel: Tunnel | undefined;
  private untrack: (() => void) | undefined;
  private allowedLine: AllowedLine | undefined;
  /** The grant the CONNECT was allowed by (a re-check may swap `grant`); its receipt names this one. */
  private readonly allowedBy: Grant;
  private dialled: readonly string[] = [];
  private openedMicros = 0;

  constructor(
    private readonly fields: DecisionFields,
    public grant: Grant,
    private readonly release: () => void,
    private readonly deps: ConnectHandlerDeps,
    private readonly openSet: Set<ActiveTunnel>,
  ) {
    this.peerAddr = fields.source_peer_addr;
    this.allowedBy = grant;
  }

  start(stream: ServerHttp2Stream, socket: Socket, allowed: AllowedLine, dialled: readonly string[]): void {
    this.allowedLine = allowed;
    if (this.deps.receipts !== undefined) {
      this.dialled = dialled;
      this.openedMicros = receiptMicros();
    }
    this.openSet.add(this);
    this.deps.metrics.tunnelsOpen.inc();
    this.tunnel = new Tunnel(stream, socket, this.deps.tunnelIdleTimeoutMs, this);
    // The rest waits for the next check phase: node flushes the 200 just queued in a native immediate,
    // which runs before ours, so the client's CONNECT→200 does not wait on a JSON serialization or the
    // revocation index. A registry change processed in between is not missed: track() re-checks any
    // grant decided before the newest change it has seen (grantMayBeStale).
    setImmediate(afterResponse, this);
  }

  /** @internal */
  afterResponse(): void {
    this.writeAllowedLine();
    const tunnel = this.tunnel;
    if (tunnel === undefined || tunnel.closed) return;
    try {
      this.untrack = this.deps.tracker.track(this);
    } catch (err) {
      // Untracked means unrevocable: refuse to keep such a tunnel open.
      this.deps.logger.error({ err, ...this.fields }, 'cannot track tunnel for revocation');
      tunnel.reset('revoked', 'revocation tracking failed');
    }
  }

  revoke(reason: DenyReason | 'expired', detail: string): void {
    const end: TunnelEndReason =
      reason === 'expired' || reason === 'registry_unavailable' ? reason : 'revoked';
    this.tunnel?.reset(end, end === 'revoked' ? `${reason}: ${detail}` : detail);
  }

  /** Scrape time, while open: the bytes moved so far. */
  addBytes(into: ByteTotals): void {
    const t = this.tunnel;
    if (t === undefined) return;
    into.client_to_dest += t.bytesClientToDest;
    into.dest_to_client += t.bytesDestToClient;
  }

  /** @internal */
  writeAllowedLine(): void {
    const line = this.allowedLine;
    if (line === undefined) return;
    this.allowedLine = undefined;
    logAllowed(this.deps.logger, line);
  }

  tunnelClosed(t: Tunnel): void {
    this.writeAllowedLine();
    const { metrics, logger } = this.deps;
    // Together, so the bytes move from the open set's count to the closed total between two scrapes.
    this.openSet.delete(this);
    metrics.tunnelBytes.closed(t);
    this.untrack?.();
    this.release();
    metrics.tunnelsOpen.dec();
    this.deps.receipts?.tunnelEnded({
      fields: this.fields,
      grant: this.allowedBy,
      dialled: this.dialled,
      openedMicros: this.openedMicros,
      bytesUp: t.bytesClientToDest,
      bytesDown: t.bytesDestToClient,
      endReason: t.endReason,
      endDetail: t.endDetail,
    });
    logger.info(
      {
        ...this.fields,
        tunnel_id: this.id,
        permission_id: this.grant.observedDenyReason === undefined ? this.grant.permissionId : null,
        bytes_client_to_dest: t.bytesClientToDest,
        bytes_dest_to_client: t.bytesDestToClient,
        duration_ms: Date.now() - t.startedAt,
        end_reason: t.endReason,
        end_detail: t.endDetail,
      },
      'tunnel closed',
    );
  }

  /** Reset now (drain deadline); idempotent. */
  reset(reason: TunnelEndReason, detail: string): void {
    this.tunnel?.reset(reason, detail);
  }
}

function afterResponse(t: ActiveTunnel): void {
  t.afterResponse();
}
