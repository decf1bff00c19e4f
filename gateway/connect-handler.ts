/**
 * One HTTP/2 stream, start to finish: 405 / 400 / 403 / 429 / 503 / 502, or 200 and a tunnel
 * (docs/contract.md "CONNECT: answers and log lines").
 * Cheap refusals come first so that floods and unidentified clients never cost a registry query, and
 * the destination is dialled before answering, so a 200 always means bytes can flow.
 *
 * Exactly one decision line per CONNECT: "CONNECT denied" for every refusal up to and including the
 * address guard, "CONNECT allowed" once policy and guard agree (a later dial failure is logged as
 * "upstream connect failed" and answered 502). agent_gateway_connect_decisions_total is counted here
 * with each decision line and nowhere else, so it is the final outcome: a CONNECT the policy allows
 * but a tunnel limit or the address guard refuses counts as a deny with that reason. A CONNECT whose
 * client goes away before the decision gets neither.
 */

import { constants, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { type Span, SpanStatusCode, type Tracer } from '@opentelemetry/api';
import { LRUCache } from 'lru-cache';
import { DENY_REASON_HEADER, REQUEST_ID_HEADER } from '../core/access-request-id.js';
import { type Destination, InvalidDestinationError, normalizeDestination } from '../core/destination.js';
import type { IdentityResult, PeerIdentity } from '../core/identity-extension.js';
import type { AccessRequestHold } from './access-request-hold.js';
import { ActiveTunnel, type AllowedLine, type DecisionFields, logAllowed } from './active-tunnel.js';
import type { AddressBudget } from './address-limits.js';
import type {
  AccessRequestRecorder,
  Authorizer,
  DenyReason,
  Grant,
  TunnelLimits,
  TunnelTracker,
} from './authorization.js';
import type { ByteTotals, GatewayMetrics, OpenTunnelBytes } from './metrics.js';
import type { GatewayReceipts } from './receipts/gateway-receipts.js';
import type { Logger } from './telemetry.js';
import { boundedLogValue, startConnectSpan, traceIdOf } from './telemetry.js';
import { gatewayReset, type TunnelEndReason } from './tunnel.js';
import type { DialFailureReason, UpstreamDialer } from './upstream-dialer.js';

const { NGHTTP2_NO_ERROR, NGHTTP2_INTERNAL_ERROR } = constants;

export type ConnectHandlerDeps = {
  readonly authorizer: Authorizer;
  readonly tracker: TunnelTracker;
  readonly limits: TunnelLimits;
  /** Registry lookups a source address may cause before any of its connections is proven. */
  readonly addressBudget: AddressBudget;
  readonly dialer: UpstreamDialer;
  readonly metrics: GatewayMetrics;
  readonly logger: Logger;
  readonly tracer: Tracer;
  readonly tunnelIdleTimeoutMs: number;
  /** True once drain has begun: CONNECTs that reach us after that are refused with 503. */
  readonly isDraining: () => boolean;
  /** Policy denials a grant would fix become access requests; undefined = off. */
  readonly requests?: AccessRequestRecorder | undefined;
  /** requests.hold_ms > 0: a no_permission denial may wait for a grant (access-request-hold.ts). */
  readonly hold?: AccessRequestHold | undefined;
  /** Tunnel receipts (docs/contract.md "Receipts"); undefined = off. */
  readonly receipts?: GatewayReceipts | undefined;
};

/** What the server knows about the connection a stream arrived on. */
export type StreamOrigin = {
  readonly identity: IdentityResult;
  /** `ip:port` of the client's TCP connection. */
  readonly peerAddr: string;
  /** The source address as per-address budgets count it (address-limits.ts addressKey). */
  readonly addressKey: string;
  readonly connection: ConnectionProof;
};

/**
 * Whether the connection has had an allowed CONNECT: then it holds a granted key and its CONNECTs no
 * longer draw on the per-address budget, so a flood from the same address cannot lock it out.
 */
export interface ConnectionProof {
  readonly proven: boolean;
  /** The first allowed CONNECT on this connection; idempotent. */
  markProven(): void;
}

const NORMALIZED_CACHE_ENTRIES = 4096;
// Normalization runs before the identity check, so any client picks the keys: a long one (a 253-byte
// name, a port, some padding the normalizer trims) is normalized each time rather than kept.
const NORMALIZED_CACHE_KEY_MAX = 300;
// lru-cache's get() defaults its options to a fresh {}; one shared object keeps a hit allocation-free.
const GET_OPTIONS: LRUCache.GetOptions<string, Destination, unknown> = {};

export class ConnectHandler implements OpenTunnelBytes {
  /** Open tunnels, so drain can reset the stragglers and /metrics can count their bytes. */
  private readonly open = new Set<ActiveTunnel>();

  /**
   * :authority → its normalized destination. Agents ask for the same few destinations over and over,
   * normalization (IDNA, IP parsing) is pure, and Destination is immutable. Only valid ones are kept;
   * a client cycling through new names evicts the least recently used, not the agents' few.
   */
  private readonly normalized = new LRUCache<string, Destination>({ max: NORMALIZED_CACHE_ENTRIES });
  /** The allow series, bound once: label lookup per CONNECT is measurable on the hot path. */
  private readonly allowCounter;

  constructor(private readonly deps: ConnectHandlerDeps) {
    deps.metrics.tunnelBytes.watch(this);
    this.allowCounter = deps.metrics.connectDecisions.labels({ result: 'allow', reason: 'none' });
  }

  get openTunnels(): number {
    return this.open.size;
  }

  /** Scrape time: the bytes the open tunnels have moved so far. */
  addOpenTunnelBytes(into: ByteTotals): void {
    for (const t of this.open) t.addBytes(into);
  }

  /** Reset every open tunnel now (drain deadline). */
  resetAll(reason: TunnelEndReason, detail: string): void {
    for (const t of [...this.open]) t.reset(reason, detail);
  }

  /** Handle one stream; never throws (failures are logged and the stream is reset). */
  handle(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, origin: StreamOrigin): void {
    // A stream always gets an 'error' listener: a client reset mid-response must not crash the process.
    stream.on('error', ignoreStreamError);
    if (headers[':method'] !== 'CONNECT') {
      reply(stream, 405, { allow: 'CONNECT' });
      return;
    }
    this.connect(stream, headers, origin).catch((err: unknown) => {
      this.deps.logger.error({ err, source_peer_addr: origin.peerAddr }, 'CONNECT failed unexpectedly');
      gatewayReset(stream, NGHTTP2_INTERNAL_ERROR);
    });
  }

  private async connect(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    origin: StreamOrigin,
  ): Promise<void> {
    const { deps } = this;
    const span = startConnectSpan(deps.tracer, headers, origin.peerAddr);
    const authority = headers[':authority'] ?? '';
    // Client-supplied values are capped here, once, for every line built from these fields.
    const fields: DecisionFields = {
      source_identity: origin.identity.ok ? boundedLogValue(origin.identity.peer.identity) : null,
      source_peer_addr: origin.peerAddr,
      dest_authority: boundedLogValue(authority),
    };
    const traceId = traceIdOf(span);
    if (traceId !== undefined) fields.trace_id = traceId;
    const deny = (status: number, reason: DenyReason, detail: string, requestId?: string) =>
      this.deny(stream, span, fields, origin, status, reason, detail, requestId);

    if (deps.isDraining()) return deny(503, 'draining', 'gateway is shutting down');
    // No tunnel the gateway cannot account for (docs/contract.md "Receipts", on_failure).
    const unrecorded = deps.receipts?.refusing();
    if (unrecorded !== undefined)
      return deny(503, 'receipts_unavailable', `receipts cannot be written: ${unrecorded}`);

    let destination = this.normalized.get(authority, GET_OPTIONS);
    if (destination === undefined) {
      try {
        destination = normalizeDestination(authority);
      } catch (err) {
        if (!(err instanceof InvalidDestinationError)) throw err;
        return deny(400, 'invalid_authority', err.why);
      }
      if (authority.length <= NORMALIZED_CACHE_KEY_MAX) this.normalized.set(authority, destination);
    }
    fields.destination = destination.normalized;
    span.setAttribute('server.address', destination.normalized);

    // Identity was read once for the whole connection; refusing here (not at the TLS layer) gives the
    // client a status and the operator a decision line, at no registry cost.
    if (!origin.identity.ok) return deny(403, origin.identity.reason, origin.identity.detail);
    const peer: PeerIdentity = origin.identity.peer;

    // Limits also count their own rejections (limitRejections). The proven key's own rate first: it is
    // the cheapest check, and keyed by what TLS proved, so nobody else's flood can spend it. Then a
    // connection that has not proven a granted key draws on its address's budget, so keys minted per
    // connection cannot make an unbounded number of registry lookups; the token comes back if the
    // CONNECT is allowed.
    const limited = deps.limits.admitConnect(peer);
    if (limited !== undefined) return deny(limited.status, limited.reason, 'CONNECT rate limit');
    const connection = origin.connection;
    const charged = !connection.proven;
    if (charged) {
      const spent = deps.addressBudget.takeLookup(origin.addressKey);
      if (spent !== undefined)
        return deny(spent.status, spent.reason, 'too many denied CONNECTs from this address');
    }

    // Awaited only when pending: a cached decision (and a literal address below) continues in this turn
    // instead of queueing behind whatever else is in the microtask queue.
    const answer = deps.authorizer.authorize(peer, destination);
    let decision = answer instanceof Promise ? await answer : answer;
    let requestId: string | undefined;
    if (!decision.allow) {
      // Recorded before any hold, so a principal can see the request and approve it while it waits.
      requestId = deps.requests?.record(peer, destination, decision.reason);
      if (decision.reason === 'no_permission' && deps.hold !== undefined) {
        const held = await deps.hold.hold(peer, destination, stream);
        if (held.kind === 'gone') return this.abandoned(span, fields, 'client went away while held');
        if (held.kind === 'allow') decision = { allow: true, grant: held.grant, cached: false };
      }
    }
    if (decision.allow) {
      if (charged) deps.addressBudget.refundLookup(origin.addressKey);
      connection.markProven();
    }
    // registry_busy is the gateway's capacity, not the caller's fault: 503, like tunnel_limit.
    if (!decision.allow) {
      const status = decision.reason === 'registry_busy' ? 503 : 403;
      return deny(status, decision.reason, decision.detail, requestId);
    }
    if (isGone(stream)) return this.abandoned(span, fields, 'client went away during authorization');
    const grant = decision.grant;

    const slot = deps.limits.acquireTunnel(peer);
    if ('status' in slot) return deny(slot.status, slot.reason, 'open tunnel limit reached');
    let handedOver = false;
    try {
      const resolving = deps.dialer.resolve(destination);
      const resolution = resolving instanceof Promise ? await resolving : resolving;
      if (!resolution.ok && resolution.reason === 'destination_address_denied') {
        deps.metrics.upstreamConnectFailures.inc({ reason: 'address_denied' });
        return deny(403, 'destination_address_denied', resolution.detail);
      }
      // Counted now (policy and guard agree); its log line is written once the outcome is known, and
      // on success only after the 200 has gone out (ActiveTunnel.afterResponse).
      this.countAllowed(span, grant);
      const allowedLine: AllowedLine = {
        fields,
        grant,
        cached: decision.cached,
        requestId: this.observed(peer, destination, grant),
      };

      if (isGone(stream)) return this.abandonedAfterAllow(span, allowedLine, 'client went away before dial');
      if (!resolution.ok)
        return this.dialFailed(stream, span, allowedLine, resolution.reason, resolution.detail);
      const abort = new AbortController();
      const onGone = () => abort.abort();
      stream.once('close', onGone);
      const connection = await deps.dialer.connect(resolution, abort.signal);
      stream.removeListener('close', onGone);
      if (!connection.ok) {
        if (connection.reason === 'cancelled')
          return this.abandonedAfterAllow(span, allowedLine, 'client went away during dial');
        return this.dialFailed(stream, span, allowedLine, connection.reason, connection.detail);
      }
      if (isGone(stream)) {
        connection.socket.destroy();
        return this.abandonedAfterAllow(span, allowedLine, 'client went away during dial');
      }

      stream.respond({ ':status': 200 });
      span.setAttribute('http.response.status_code', 200);
      span.end();
      const live = new ActiveTunnel(fields, grant, slot.release, deps, this.open);
      live.start(stream, connection.socket, allowedLine, connection.dialled);
      handedOver = true;
    } finally {
      if (!handedOver) slot.release();
    }
  }

  private deny(
    stream: ServerHttp2Stream,
    span: Span,
    fields: DecisionFields,
    origin: StreamOrigin,
    status: number,
    reason: DenyReason,
    detail: string,
    requestId: string | undefined,
  ): void {
    this.deps.metrics.connectDecisions.inc({ result: 'deny', reason });
    const bounded = boundedLogValue(detail);
    const peer = origin.identity.ok ? origin.identity.peer : undefined;
    this.deps.receipts?.denied(fields, peer, reason, bounded);
    const line: Record<string, unknown> = {
      ...fields,
      policy_decision: 'deny',
      deny_reason: reason,
      deny_detail: bounded,
      status,
    };
    const headers: Record<string, string> = { [DENY_REASON_HEADER]: reason };
    if (requestId !== undefined) {
      line['request_id'] = requestId;
      headers[REQUEST_ID_HEADER] = requestId;
    }
    this.deps.logger.info(line, 'CONNECT denied');
    span.setAttribute('agent_gateway.deny_reason', reason);
    this.finish(stream, span, status, reason, headers);
  }

  /**
   * Observe mode: an allow with no grant is counted and recorded as the access request its denial would
   * have been (docs/contract.md "Access requests"); returns that request's id.
   */
  private observed(peer: PeerIdentity, destination: Destination, grant: Grant): string | undefined {
    const reason = grant.observedDenyReason;
    if (reason === undefined) return undefined;
    this.deps.metrics.observedConnects.inc();
    return this.deps.requests?.record(peer, destination, reason);
  }

  private countAllowed(span: Span, grant: Grant): void {
    this.allowCounter.inc();
    span.setAttribute('agent_gateway.permission_id', grant.permissionId);
  }

  private dialFailed(
    stream: ServerHttp2Stream,
    span: Span,
    allowed: AllowedLine,
    reason: DialFailureReason,
    detail: string,
  ): void {
    logAllowed(this.deps.logger, allowed);
    this.deps.metrics.upstreamConnectFailures.inc({ reason });
    this.deps.logger.warn(
      { ...allowed.fields, dial_error: reason, detail: boundedLogValue(detail), status: 502 },
      'upstream connect failed',
    );
    this.finish(stream, span, 502, reason);
  }

  private abandonedAfterAllow(span: Span, allowed: AllowedLine, detail: string): void {
    logAllowed(this.deps.logger, allowed);
    this.abandoned(span, allowed.fields, detail);
  }

  private abandoned(span: Span, fields: DecisionFields, detail: string): void {
    this.deps.logger.debug({ ...fields, detail }, 'CONNECT abandoned');
    span.setStatus({ code: SpanStatusCode.ERROR, message: detail });
    span.end();
  }

  private finish(
    stream: ServerHttp2Stream,
    span: Span,
    status: number,
    message: string,
    extra: Record<string, string> = {},
  ): void {
    span.setAttribute('http.response.status_code', status);
    span.setStatus({ code: SpanStatusCode.ERROR, message });
    span.end();
    reply(stream, status, extra);
  }
}

function isGone(stream: ServerHttp2Stream): boolean {
  return stream.destroyed || stream.closed;
}

/**
 * A complete response (HEADERS with END_STREAM) followed by RST_STREAM(NO_ERROR), the RFC 9113 §8.1
 * way to tell a client that stopped short of ending its request that we are done: otherwise the stream
 * stays half-open until the client thinks of closing it, or the client cancels it and that cancel
 * counts against its connection's reset budget.
 */
function reply(stream: ServerHttp2Stream, status: number, extra: Record<string, string> = {}): void {
  if (isGone(stream) || stream.headersSent) return;
  stream.respond({ ':status': status, ...extra }, { endStream: true });
  // On the next turn, once the response is on the wire: a reset submitted while it is still queued makes
  // nghttp2 drop it, and Node 22 queues both in one go when this runs inside the 'stream' event (the
  // client then sees RST_STREAM(NO_ERROR) and no status; Node 20 and 24 flush the response first).
  setImmediate(gatewayReset, stream, NGHTTP2_NO_ERROR);
}

function ignoreStreamError(): void {
  // Reported through 'close' (rstCode) and the tunnel's end reason.
}
