/**
 * Every gateway tunable, typed, in one place (the original's keys plus this project's additions, all
 * defaulted so an original config file still loads; docs/contract.md "Configuration"). A config error
 * names the file and the dotted key; an unknown key anywhere is an error, because a misspelled limit that
 * silently falls back to its default is a security bug. A key exists by being read below: CONFIG_KEYS
 * is what the reads record, and a file is checked against it before any value is read.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parse as parseToml } from 'smol-toml';
import { errorText } from '../core/error-text.js';
import type { TrustRoots } from '../core/policy.js';
import type { Cidr } from './address-guard.js';
import { ConfigError, ConfigReader, type HostPort, type LogLevel, type Raw } from './config-reader.js';
import { parseIdentityGlob } from './observe-identities.js';
import { type ReceiptsConfig, readReceiptsConfig } from './receipts/receipts-config.js';
import { trustRootFromBase64, trustRootFromFile } from './trust-roots.js';

export {
  ConfigError,
  type HostPort,
  type LogLevel,
  logLevelFromFilter,
} from './config-reader.js';

export type GatewayConfig = {
  readonly path: string;
  readonly server: {
    readonly listenAddr: HostPort;
    readonly tlsCertPath: string;
    readonly tlsKeyPath: string;
    /** Processes sharing the listening port (node:cluster); 1 = no cluster. */
    readonly workers: number;
    readonly handshakeTimeoutMs: number;
    /** An HTTP/2 connection with no open stream for this long is closed with GOAWAY. */
    readonly sessionIdleTimeoutMs: number;
    /** SIGTERM: how long open tunnels may keep running before they are cut. */
    readonly drainTimeoutMs: number;
    /** A connection with no allowed CONNECT this long after its handshake gets GOAWAY; 0 = never. */
    readonly unprovenConnectionTimeoutMs: number;
  };
  readonly http2: {
    readonly maxConcurrentStreams: number;
    /** Streams a connection may have open before its first allowed CONNECT (at most the above). */
    readonly maxConcurrentStreamsUnproven: number;
    readonly streamWindowBytes: number;
    readonly connectionWindowBytes: number;
    readonly maxSessionMemoryMb: number;
    readonly maxHeaderListBytes: number;
    /** SETTINGS_MAX_FRAME_SIZE advertised: the largest DATA frame a client may send (RFC 9113 §6.5.2). */
    readonly maxFrameSize: number;
    /** Streams a client may cancel (RST_STREAM) per 10 s before its connection gets GOAWAY. */
    readonly maxResetsPer10s: number;
  };
  readonly limits: {
    readonly maxConnections: number;
    readonly maxTunnels: number;
    readonly maxTunnelsPerIdentity: number;
    /** CONNECTs per second per identity (token bucket refill); 0 = unlimited. */
    readonly connectRatePerIdentity: number;
    readonly connectBurstPerIdentity: number;
    /** TCP connections from one address (IPv6: one /64), per process. */
    readonly maxConnectionsPerAddress: number;
    /** Connections from one address that have not yet had an allowed CONNECT, per process. */
    readonly maxUnprovenConnectionsPerAddress: number;
    /** Denied CONNECTs per second per address on unproven connections (token bucket); 0 = unlimited. */
    readonly deniedConnectRatePerAddress: number;
    readonly deniedConnectBurstPerAddress: number;
  };
  readonly upstream: {
    readonly connectTimeoutMs: number;
    /** No bytes either way for this long ends a tunnel; 0 = never. */
    readonly tunnelIdleTimeoutMs: number;
    readonly denyCidrs: readonly Cidr[];
    readonly allowCidrs: readonly Cidr[];
    /** Normalized destination → host:port actually dialled (like curl --resolve); empty by default. */
    readonly overrides: ReadonlyMap<string, HostPort>;
  };
  readonly admin: {
    /** Plain-HTTP /healthz /readyz /metrics listener; undefined = off. */
    readonly listenAddr: HostPort | undefined;
  };
  readonly observability: {
    readonly logLevel: LogLevel;
    readonly otlpEndpoint: string | undefined;
    readonly logStdout: boolean;
  };
  /** Access requests recorded from denials (docs/contract.md "Access requests"). */
  readonly requests: {
    /** Record requests and name them in the 403 (needs registry schema version 7). */
    readonly enabled: boolean;
    /** Pending rows beyond which no new row is inserted (existing rows are still bumped). */
    readonly maxPending: number;
    /** Denials recorded per identity + key per minute; 0 = unlimited. */
    readonly ratePerIdentity: number;
    /** How long a denial waits in memory before its batch is written. */
    readonly flushIntervalMs: number;
    /** A dismissed request is not re-opened by denials this long after it was dismissed. */
    readonly dismissQuietHours: number;
    /** How long a no_permission CONNECT of a key with a grant waits for one; 0 = answer at once. */
    readonly holdMs: number;
    /** CONNECTs held at once, per process. */
    readonly maxHeld: number;
    /** CONNECTs held at once per proven key (identity + SPKI), per process. */
    readonly maxHeldPerIdentity: number;
  };
  readonly policy: {
    readonly clientExtOid: string;
    readonly databaseUrl: string;
    /**
     * Streaming replicas for CONNECT lookups (docs/contract.md "Replicas"); empty = the primary answers
     * everything. Each gets the primary's pool settings.
     */
    readonly replicaDatabaseUrls: readonly string[];
    readonly maxConnections: number;
    readonly connectTimeoutMs: number;
    readonly poolAcquireTimeoutMs: number;
    readonly queryTimeoutMs: number;
    /** Lookups (CONNECT cache misses) waiting for or holding a connection; beyond it 503 registry_busy. */
    readonly maxLookupsInFlight: number;
    /** Connections of the recheck lane: live-tunnel re-checks never queue behind lookups. */
    readonly recheckConnections: number;
    /** Query timeout on the recheck lane: nobody waits on a re-check, and a timeout costs a retry. */
    readonly recheckQueryTimeoutMs: number;
    /** While the LISTEN connection is down, open tunnels are re-checked this often. */
    readonly revocationRecheckIntervalMs: number;
    /** Every open tunnel re-checked this often whether or not notifications flow; 0 = off. */
    readonly revocationFullRecheckIntervalMs: number;
    /** A tunnel whose re-checks cannot reach the registry for this long ends; 0 = never. */
    readonly recheckUnavailableGraceMs: number;
    /** Verified-decision cache (invalidated by registry notifications); 0 entries = off. */
    readonly decisionCacheMaxEntries: number;
    readonly decisionCacheTtlMs: number;
    /** Policy denials remembered this long (dropped by any registry change); 0 = off. */
    readonly denialCacheTtlMs: number;
    /**
     * policy.trust_roots and policy.trust_root_files, by root key id; empty = no root of trust
     * (docs/contract.md "Root of trust").
     */
    readonly trustRoots: TrustRoots;
    /**
     * policy.observe_identities: identities whose CONNECTs that lack only a grant are let through and
     * recorded (gateway/observe-identities.ts); empty = none. Read at start only.
     */
    readonly observeIdentities: readonly RegExp[];
  };
  /** Tunnel receipts (docs/contract.md "Receipts"); enabled false = none. */
  readonly receipts: ReceiptsConfig;
};

/**
 * Addresses a granted name must never lead to unless an operator says so (allow_cidrs): this host
 * (loopback: the admin port, a local database), private and shared networks, cloud metadata and
 * link-local, IPv6 forms that embed an IPv4 address (IPv4-compatible ::/96, IPv4-translated
 * ::ffff:0:0:0/96, 6to4 2002::/16, Teredo 2001::/32, NAT64; IPv4-mapped addresses are judged as IPv4, see address-guard.ts),
 * unspecified, multicast and reserved space.
 * A signed grant names a destination; DNS decides where it goes, and DNS can be changed by whoever
 * controls the name, so the check is on the address actually dialled.
 */
export const DEFAULT_DENY_CIDRS = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '224.0.0.0/4',
  '240.0.0.0/4',
  '::/128',
  '::1/128',
  '::/96',
  '::ffff:0:0:0/96',
  '2002::/16',
  '2001::/32',
  '64:ff9b::/96',
  '64:ff9b:1::/48',
  'fc00::/7',
  'fe80::/10',
  'ff00::/8',
];

/**
 * Default `server.workers`: one process on a machine with up to 2 CPUs, else one worker per CPU. On 2 CPUs
 * a second worker competes with the kernel's TCP and TLS work for the same cores, so it moved no more
 * bytes and cost more CPU per byte, while a primary and two workers hold about three times one
 * process's memory (bench/README.md "Fourth round (issue #19)").
 */
export function defaultWorkers(cpus = availableParallelism()): number {
  return cpus <= 2 ? 1 : cpus;
}

/** Read and validate; throws ConfigError. `env` supplies database_url_env and AGENT_GATEWAY_LOG_STDOUT. */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  return parseConfig(readRaw(path), path, env);
}

/**
 * Only the trust roots of a config file (policy.trust_roots and policy.trust_root_files), read by the
 * same code as loadConfig: what `agent-permissions check --config` judges with. Other keys are checked
 * only for their names, so an admin's shell need not hold, say, the gateway's database URL variable.
 */
export function loadConfigTrustRoots(path: string): TrustRoots {
  const r = new ConfigReader(path, readRaw(path), '', new Set());
  r.rejectUnknown(CONFIG_KEYS);
  return readTrustRoots(r.section('policy', true));
}

/**
 * Only the [receipts] section (other keys checked for their names only): what `agent_gateway
 * receipts-key --config` needs, without the database URL's environment variable.
 */
export function loadConfigReceipts(path: string): ReceiptsConfig {
  const r = new ConfigReader(path, readRaw(path), '', new Set());
  r.rejectUnknown(CONFIG_KEYS);
  return readReceiptsConfig(r.section('receipts', false), false);
}

function readTrustRoots(p: ConfigReader): TrustRoots {
  return new Map([
    ...p.list('trust_roots', trustRootFromBase64),
    ...p.list('trust_root_files', trustRootFromFile),
  ]);
}

function readRaw(path: string): Raw {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, '(file)', `cannot read: ${errorText(err)}`);
  }
  let raw: Raw;
  try {
    raw = parseToml(text) as Raw;
  } catch (err) {
    throw new ConfigError(path, '(syntax)', errorText(err).split('\n')[0] ?? 'invalid TOML');
  }
  return raw;
}

/**
 * Every key the loader knows, dotted ("server.listen_addr", "upstream.overrides"), in reading order:
 * recorded by reading a config that sets only the required keys.
 */
export const CONFIG_KEYS: readonly string[] = (() => {
  const read = new Set<string>();
  const required = {
    server: { tls_cert_path: 'cert.pem', tls_key_path: 'key.pem' },
    observability: {},
    policy: { database_url: 'postgresql://' },
  };
  readConfig(new ConfigReader('(keys)', required, '', read), '(keys)', {});
  return [...read];
})();

export function parseConfig(raw: Raw, path: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const r = new ConfigReader(path, raw, '', new Set());
  r.rejectUnknown(CONFIG_KEYS);
  const config = readConfig(r, path, env);
  checkAcrossKeys(config, path);
  return config;
}

/** Reads every key, unconditionally: a key read only sometimes would be missing from CONFIG_KEYS. */
function readConfig(r: ConfigReader, path: string, env: NodeJS.ProcessEnv): GatewayConfig {
  const s = r.section('server', true);
  const h = r.section('http2', false);
  const l = r.section('limits', false);
  const u = r.section('upstream', false);
  const a = r.section('admin', false);
  const o = r.section('observability', true);
  const p = r.section('policy', true);
  const q = r.section('requests', false);
  const rc = r.section('receipts', false);
  return {
    path,
    server: {
      listenAddr: s.hostPort('listen_addr', '127.0.0.1:8443'),
      tlsCertPath: s.string('tls_cert_path'),
      tlsKeyPath: s.string('tls_key_path'),
      workers: s.int('workers', defaultWorkers(), 1, 256),
      handshakeTimeoutMs: s.int('handshake_timeout_ms', 10_000, 100, 600_000),
      sessionIdleTimeoutMs: s.int('session_idle_timeout_ms', 300_000, 0, 86_400_000),
      drainTimeoutMs: s.int('drain_timeout_ms', 30_000, 0, 86_400_000),
      unprovenConnectionTimeoutMs: s.int('unproven_connection_timeout_ms', 10_000, 0, 86_400_000),
    },
    http2: {
      maxConcurrentStreams: h.int('max_concurrent_streams', 1000, 1, 100_000),
      maxConcurrentStreamsUnproven: h.int('max_concurrent_streams_unproven', 100, 1, 100_000),
      streamWindowBytes: h.int('stream_window_bytes', 4 * 1024 * 1024, 65_535, 2 ** 31 - 1),
      connectionWindowBytes: h.int('connection_window_bytes', 32 * 1024 * 1024, 65_535, 2 ** 31 - 1),
      maxSessionMemoryMb: h.int('max_session_memory_mb', 128, 1, 65_536),
      maxHeaderListBytes: h.int('max_header_list_bytes', 16 * 1024, 1024, 1024 * 1024),
      maxFrameSize: h.int('max_frame_size', 262_144, 16_384, 16_777_215),
      maxResetsPer10s: h.int('max_resets_per_10s', 200, 1, 1_000_000),
    },
    limits: {
      maxConnections: l.int('max_connections', 10_000, 1, 1_000_000),
      maxTunnels: l.int('max_tunnels', 20_000, 1, 10_000_000),
      maxTunnelsPerIdentity: l.int('max_tunnels_per_identity', 1_000, 1, 10_000_000),
      connectRatePerIdentity: l.int('connect_rate_per_identity', 200, 0, 1_000_000),
      connectBurstPerIdentity: l.int('connect_burst_per_identity', 400, 1, 10_000_000),
      maxConnectionsPerAddress: l.int('max_connections_per_address', 1_000, 1, 1_000_000),
      maxUnprovenConnectionsPerAddress: l.int('max_unproven_connections_per_address', 64, 1, 1_000_000),
      deniedConnectRatePerAddress: l.int('denied_connect_rate_per_address', 20, 0, 1_000_000),
      deniedConnectBurstPerAddress: l.int('denied_connect_burst_per_address', 200, 1, 10_000_000),
    },
    upstream: {
      connectTimeoutMs: u.int('connect_timeout_ms', 10_000, 1, 600_000),
      tunnelIdleTimeoutMs: u.int('tunnel_idle_timeout_ms', 3_600_000, 0, 7 * 86_400_000),
      denyCidrs: u.cidrs('deny_cidrs', DEFAULT_DENY_CIDRS),
      allowCidrs: u.cidrs('allow_cidrs', []),
      overrides: u.overrides('overrides'),
    },
    admin: { listenAddr: a.optionalHostPort('listen_addr', '127.0.0.1:9090') },
    observability: {
      logLevel: o.logLevel('log_level'),
      otlpEndpoint: o.optionalString('otlp_endpoint'),
      logStdout: env['AGENT_GATEWAY_LOG_STDOUT']?.toLowerCase() !== 'false',
    },
    policy: {
      clientExtOid: p.oid('client_ext_oid', '1.3.6.1.4.1.57264.1.1'),
      databaseUrl: p.databaseUrl(env),
      replicaDatabaseUrls: p.replicaDatabaseUrls(env),
      maxConnections: p.int('max_connections', 5, 1, 1000),
      connectTimeoutMs: p.int('connect_timeout_ms', 5000, 1, 600_000),
      poolAcquireTimeoutMs: p.int('pool_acquire_timeout_ms', 1000, 1, 600_000),
      queryTimeoutMs: p.int('query_timeout_ms', 500, 1, 600_000),
      maxLookupsInFlight: p.int('max_lookups_in_flight', 32, 1, 100_000),
      recheckConnections: p.int('recheck_connections', 2, 1, 100),
      recheckQueryTimeoutMs: p.int('recheck_query_timeout_ms', 2000, 1, 600_000),
      revocationRecheckIntervalMs: p.int('revocation_recheck_interval_ms', 2000, 100, 3_600_000),
      revocationFullRecheckIntervalMs: p.int('revocation_full_recheck_interval_ms', 30_000, 0, 86_400_000),
      recheckUnavailableGraceMs: p.int('recheck_unavailable_grace_ms', 60_000, 0, 7 * 86_400_000),
      decisionCacheMaxEntries: p.int('decision_cache_max_entries', 10_000, 0, 10_000_000),
      decisionCacheTtlMs: p.int('decision_cache_ttl_ms', 30_000, 0, 86_400_000),
      denialCacheTtlMs: p.int('denial_cache_ttl_ms', 2_000, 0, 60_000),
      trustRoots: readTrustRoots(p),
      observeIdentities: p.list('observe_identities', parseIdentityGlob),
    },
    requests: {
      enabled: q.bool('enabled', true),
      maxPending: q.int('max_pending', 10_000, 1, 10_000_000),
      ratePerIdentity: q.int('rate_per_identity', 60, 0, 1_000_000),
      flushIntervalMs: q.int('flush_interval_ms', 250, 10, 60_000),
      dismissQuietHours: q.int('dismiss_quiet_hours', 24, 0, 87_600),
      holdMs: q.int('hold_ms', 0, 0, 600_000),
      maxHeld: q.int('max_held', 100, 1, 100_000),
      maxHeldPerIdentity: q.int('max_held_per_identity', 10, 1, 100_000),
    },
    receipts: readReceiptsConfig(rc),
  };
}

/** Rules between keys, checked once every key has its own type and range. */
function checkAcrossKeys(c: GatewayConfig, path: string): void {
  const { streamWindowBytes, connectionWindowBytes, maxSessionMemoryMb } = c.http2;
  if (connectionWindowBytes < streamWindowBytes) {
    throw new ConfigError(
      path,
      'http2.connection_window_bytes',
      'must be at least http2.stream_window_bytes, or one tunnel can starve the others',
    );
  }
  if (maxSessionMemoryMb * 1024 * 1024 < connectionWindowBytes * 2) {
    throw new ConfigError(
      path,
      'http2.max_session_memory_mb',
      'must exceed twice http2.connection_window_bytes, or a slow upstream gets the whole connection GOAWAYed',
    );
  }
  const { receipts, server } = c;
  if (receipts.enabled && server.workers > 1 && `${receipts.instanceId}-w${server.workers}`.length > 64) {
    throw new ConfigError(
      path,
      'receipts.instance_id',
      `with server.workers = ${server.workers} each worker's id is instance_id + "-w<index>", which must fit in 64 characters`,
    );
  }
  const fullRecheckIntervalMs = c.policy.revocationFullRecheckIntervalMs;
  if (fullRecheckIntervalMs > 0 && fullRecheckIntervalMs < 1000) {
    throw new ConfigError(
      path,
      'policy.revocation_full_recheck_interval_ms',
      `must be 0 (off) or at least 1000, got ${fullRecheckIntervalMs}`,
    );
  }
  const decisionCacheTtlMs = c.policy.decisionCacheTtlMs;
  if (fullRecheckIntervalMs > 0 && decisionCacheTtlMs > fullRecheckIntervalMs) {
    // A cached allow is a decision nobody re-asked: it must not outlive the bound on lost notifications.
    throw new ConfigError(
      path,
      'policy.decision_cache_ttl_ms',
      `must not exceed policy.revocation_full_recheck_interval_ms (${fullRecheckIntervalMs}), got ${decisionCacheTtlMs}`,
    );
  }
}
