/**
 * Every gateway metric in one registry, so the request path and authorization increment the same
 * objects and /metrics renders one consistent page. Label values are closed sets (deny reasons,
 * directions): never put an identity, destination or address in a label, or a hostile client can blow
 * up the series count.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** Latency buckets for in-process work that may include one registry round trip (seconds). */
const DECISION_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];
const QUERY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export type GatewayMetrics = ReturnType<typeof createGatewayMetrics>;

/**
 * A fresh registry (tests build their own so counts do not leak between cases). `defaultMetrics`
 * registers the process collectors (CPU, memory, event loop lag, fds); leave it off in unit tests,
 * since prom-client's collectors install timers.
 */
export function createGatewayMetrics(opts: { defaultMetrics?: boolean; prefix?: string } = {}) {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: opts.prefix ?? '' });
  const registers = [registry];

  return {
    registry,

    connectionsTotal: new Counter({
      name: 'agent_gateway_connections_total',
      help: 'TLS/HTTP2 client connections accepted',
      registers,
    }),
    connectionsOpen: new Gauge({
      name: 'agent_gateway_connections_open',
      help: 'TLS/HTTP2 client connections currently open',
      registers,
    }),
    tunnelsOpen: new Gauge({
      name: 'agent_gateway_tunnels_open',
      help: 'CONNECT tunnels currently open',
      registers,
    }),
    connectDecisions: new Counter<'result' | 'reason'>({
      name: 'agent_gateway_connect_decisions_total',
      help:
        'Final outcome of each CONNECT, counted once: result is allow or deny, reason the deny reason ' +
        '(policy, identity, limit, address guard, draining; "none" for allows). A dial failure after an ' +
        'allow is an allow here and an upstream connect failure',
      labelNames: ['result', 'reason'],
      registers,
    }),
    decisionSeconds: new Histogram<'result'>({
      name: 'agent_gateway_decision_seconds',
      help: 'Time to authorize one CONNECT (cache, registry query and signature checks), by policy result',
      labelNames: ['result'],
      buckets: DECISION_BUCKETS,
      registers,
    }),
    registryQuerySeconds: new Histogram<'query'>({
      name: 'agent_gateway_registry_query_seconds',
      help: 'Registry query latency including pool acquire, by query name',
      labelNames: ['query'],
      buckets: QUERY_BUCKETS,
      registers,
    }),
    registryErrors: new Counter<'kind'>({
      name: 'agent_gateway_registry_errors_total',
      help: 'Registry failures (acquire_timeout, query_timeout, connect, query, listener, busy)',
      labelNames: ['kind'],
      registers,
    }),
    registryInFlight: new Gauge<'lane'>({
      name: 'agent_gateway_registry_in_flight',
      help: 'Registry requests waiting for or holding a connection, by lane (lookup, recheck, record)',
      labelNames: ['lane'],
      registers,
    }),
    tunnelBytes: tunnelBytes(registers),
    upstreamConnectFailures: new Counter<'reason'>({
      name: 'agent_gateway_upstream_connect_failures_total',
      help: 'Upstream dials that failed (timeout, refused, dns, address_denied, ...)',
      labelNames: ['reason'],
      registers,
    }),
    limitRejections: new Counter<'reason'>({
      name: 'agent_gateway_limit_rejections_total',
      help: 'CONNECTs and connections refused by a limit (rate_limited, identity_tunnel_limit, tunnel_limit, address_rate_limited, address_connection_limit, unproven_connection_limit, unproven_connection_timeout)',
      labelNames: ['reason'],
      registers,
    }),
    revocations: new Counter<'reason'>({
      name: 'agent_gateway_revocations_total',
      help: 'Open tunnels ended by live revocation or expiry, by reason',
      labelNames: ['reason'],
      registers,
    }),
    registryLookups: new Counter<'source'>({
      name: 'agent_gateway_registry_lookups_total',
      help:
        'CONNECT lookups answered, by source: primary (no replica usable, or the listener down), replica ' +
        '(caught up with the primary, or the primary unreachable), primary_fallback (a replica was asked ' +
        'but had not replayed the last registry change, or failed)',
      labelNames: ['source'],
      registers,
    }),
    degraded: new Gauge({
      name: 'agent_gateway_degraded',
      help: '1 while the registry primary is unreachable and lookups are answered by a replica (/readyz degraded)',
      registers,
    }),
    registryListenerUp: new Gauge({
      name: 'agent_gateway_registry_listener_up',
      help: '1 while the LISTEN connection for registry change notifications is established',
      registers,
    }),
    decisionCacheHits: new Counter({
      name: 'agent_gateway_decision_cache_hits_total',
      help: 'CONNECT allows served from the verified-decision cache',
      registers,
    }),
    decisionCacheMisses: new Counter({
      name: 'agent_gateway_decision_cache_misses_total',
      help: 'CONNECT decisions that needed a registry lookup (including while the cache is bypassed)',
      registers,
    }),
    accessRequests: new Counter<'outcome'>({
      name: 'agent_gateway_access_requests_total',
      help:
        'Denials that leave an access request, by outcome: recorded (written), dropped_rate (over ' +
        'requests.rate_per_identity), dropped_full (no room for a new row: requests.max_pending, or the ' +
        'in-memory batch is full), failed (the batch could not be written)',
      labelNames: ['outcome'],
      registers,
    }),
    observedConnects: new Counter({
      name: 'agent_gateway_observed_connects_total',
      help:
        'CONNECTs let through by policy.observe_identities that no grant allowed (would have been ' +
        'denied no_permission)',
      registers,
    }),
    accessRequestsHeld: new Gauge({
      name: 'agent_gateway_access_requests_held',
      help: 'CONNECTs held open waiting for a grant (requests.hold_ms)',
      registers,
    }),
    accessRequestHolds: new Counter<'outcome'>({
      name: 'agent_gateway_access_request_holds_total',
      help:
        'Denials for a missing grant considered for holding, by outcome: approved (a grant appeared, the ' +
        'CONNECT went on), timeout (requests.hold_ms passed), refused_full (requests.max_held or ' +
        'max_held_per_identity reached), cancelled (the client went away), drained (the gateway shut down)',
      labelNames: ['outcome'],
      registers,
    }),
    receiptsWritten: new Counter({
      name: 'agent_gateway_receipts_written_total',
      help: 'Receipt records written to disk, every kind (tunnel, gap, checkpoint)',
      registers,
    }),
    receiptWriteFailures: new Counter({
      name: 'agent_gateway_receipt_write_failures_total',
      help: 'Failed attempts to recover, create, write, sync or sign receipts (retried every second)',
      registers,
    }),
    receiptsDropped: new Counter({
      name: 'agent_gateway_receipts_dropped_total',
      help: 'Receipts discarded because receipts.max_queued were already waiting (a dropped gap names them)',
      registers,
    }),
    receiptsFailing: new Gauge({
      name: 'agent_gateway_receipts_failing',
      help:
        '1 while receipts cannot be written (with receipts.on_failure = "deny" new CONNECTs get 503 ' +
        'receipts_unavailable); in a cluster, the number of workers failing',
      registers,
    }),
    receiptsLastSeq: new Gauge<'gateway'>({
      name: 'agent_gateway_receipts_last_seq',
      help:
        "seq of the last receipt record written to disk, per chain (gateway = the chain's gateway id): " +
        'what an auditor compares with the end of the files',
      labelNames: ['gateway'],
      registers,
    }),
    denialCacheHits: new Counter({
      name: 'agent_gateway_denial_cache_hits_total',
      help: 'CONNECT denials served from the short denial cache (no registry lookup)',
      registers,
    }),
  };
}

export type ByteDirection = 'client_to_dest' | 'dest_to_client';

/** Payload bytes by direction. */
export type ByteTotals = Record<ByteDirection, number>;

/** One tunnel's byte counts (Tunnel bumps these plain fields per chunk). */
export type TunnelByteCounts = { readonly bytesClientToDest: number; readonly bytesDestToClient: number };

/** Something holding open tunnels (the connect handler): adds their current byte counts at scrape time. */
export type OpenTunnelBytes = { addOpenTunnelBytes(into: ByteTotals): void };

/**
 * agent_gateway_bytes_total as of the scrape: the totals of closed tunnels plus the current counts of the
 * open ones, summed in the counter's collect(), so the data path only bumps two numbers on its Tunnel and
 * a long-lived tunnel shows its bytes before it closes. It stays monotonic because a tunnel's counts
 * move from its source to `closed()` in one synchronous step (its source must stop reporting it then).
 */
function tunnelBytes(registers: Registry[]) {
  const closedTotals: ByteTotals = { client_to_dest: 0, dest_to_client: 0 };
  const sources = new Set<OpenTunnelBytes>();
  new Counter<'direction'>({
    name: 'agent_gateway_bytes_total',
    help: 'Tunnel payload bytes relayed, including those of tunnels still open at the scrape',
    labelNames: ['direction'],
    registers,
    collect() {
      const totals = { ...closedTotals };
      for (const source of sources) source.addOpenTunnelBytes(totals);
      this.reset();
      this.inc({ direction: 'client_to_dest' }, totals.client_to_dest);
      this.inc({ direction: 'dest_to_client' }, totals.dest_to_client);
    },
  });
  return {
    /** Report `source`'s open tunnels at every scrape from now on. */
    watch(source: OpenTunnelBytes): void {
      sources.add(source);
    },
    /** A tunnel's final counts, in the same turn as its source stops reporting it. */
    closed(counts: TunnelByteCounts): void {
      closedTotals.client_to_dest += counts.bytesClientToDest;
      closedTotals.dest_to_client += counts.bytesDestToClient;
    },
  };
}

/** The process-wide instance main.ts wires everywhere. */
export const metrics: GatewayMetrics = createGatewayMetrics();
