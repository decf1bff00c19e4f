/**
 * Every gateway tunable, typed, in one place (SPEC §5 plus this project's additions, all defaulted so an
 * original config file still loads). A config error names the file and the dotted key; an unknown key
 * anywhere is an error, because a misspelled limit that silently falls back to its default is a
 * security bug.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parse as parseToml } from 'smol-toml';
import { normalizeDestination } from '../core/destination.js';
import { isValidOid } from '../core/identity-extension.js';
import { type Cidr, parseCidr } from './address-guard.js';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

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
  readonly policy: {
    readonly clientExtOid: string;
    readonly databaseUrl: string;
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
  };
};

export type HostPort = { readonly host: string; readonly port: number };

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly key: string,
    why: string,
  ) {
    super(`${file}: ${key}: ${why}`);
    this.name = 'ConfigError';
  }
}

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

type Raw = Record<string, unknown>;

/** Read and validate; throws ConfigError. `env` supplies database_url_env and AGENT_GATEWAY_LOG_STDOUT. */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, '(file)', `cannot read: ${(err as Error).message}`);
  }
  let raw: Raw;
  try {
    raw = parseToml(text) as Raw;
  } catch (err) {
    throw new ConfigError(path, '(syntax)', (err as Error).message.split('\n')[0] ?? 'invalid TOML');
  }
  return parseConfig(raw, path, env);
}

export function parseConfig(raw: Raw, path: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const r = new Reader(path, raw, '');
  r.only(['server', 'http2', 'limits', 'upstream', 'admin', 'observability', 'policy']);

  const s = r.section('server', true);
  s.only([
    'listen_addr',
    'tls_cert_path',
    'tls_key_path',
    'workers',
    'handshake_timeout_ms',
    'session_idle_timeout_ms',
    'drain_timeout_ms',
    'unproven_connection_timeout_ms',
  ]);
  const h = r.section('http2', false);
  h.only([
    'max_concurrent_streams',
    'max_concurrent_streams_unproven',
    'stream_window_bytes',
    'connection_window_bytes',
    'max_session_memory_mb',
    'max_header_list_bytes',
    'max_resets_per_10s',
  ]);
  const l = r.section('limits', false);
  l.only([
    'max_connections',
    'max_tunnels',
    'max_tunnels_per_identity',
    'connect_rate_per_identity',
    'connect_burst_per_identity',
    'max_connections_per_address',
    'max_unproven_connections_per_address',
    'denied_connect_rate_per_address',
    'denied_connect_burst_per_address',
  ]);
  const u = r.section('upstream', false);
  u.only(['connect_timeout_ms', 'tunnel_idle_timeout_ms', 'deny_cidrs', 'allow_cidrs', 'overrides']);
  const a = r.section('admin', false);
  a.only(['listen_addr']);
  const o = r.section('observability', true);
  o.only(['log_level', 'otlp_endpoint']);
  const p = r.section('policy', true);
  p.only([
    'client_ext_oid',
    'database_url',
    'database_url_env',
    'max_connections',
    'connect_timeout_ms',
    'pool_acquire_timeout_ms',
    'query_timeout_ms',
    'revocation_recheck_interval_ms',
    'revocation_full_recheck_interval_ms',
    'recheck_unavailable_grace_ms',
    'max_lookups_in_flight',
    'recheck_connections',
    'recheck_query_timeout_ms',
    'decision_cache_max_entries',
    'decision_cache_ttl_ms',
    'denial_cache_ttl_ms',
  ]);

  const streamWindowBytes = h.int('stream_window_bytes', 4 * 1024 * 1024, 65_535, 2 ** 31 - 1);
  const connectionWindowBytes = h.int('connection_window_bytes', 32 * 1024 * 1024, 65_535, 2 ** 31 - 1);
  if (connectionWindowBytes < streamWindowBytes) {
    throw new ConfigError(
      path,
      'http2.connection_window_bytes',
      'must be at least http2.stream_window_bytes, or one tunnel can starve the others',
    );
  }
  const maxSessionMemoryMb = h.int('max_session_memory_mb', 128, 1, 65_536);
  if (maxSessionMemoryMb * 1024 * 1024 < connectionWindowBytes * 2) {
    throw new ConfigError(
      path,
      'http2.max_session_memory_mb',
      'must exceed twice http2.connection_window_bytes, or a slow upstream gets the whole connection GOAWAYed',
    );
  }

  const fullRecheckIntervalMs = p.int('revocation_full_recheck_interval_ms', 30_000, 0, 86_400_000);
  if (fullRecheckIntervalMs > 0 && fullRecheckIntervalMs < 1000) {
    throw new ConfigError(
      path,
      'policy.revocation_full_recheck_interval_ms',
      `must be 0 (off) or at least 1000, got ${fullRecheckIntervalMs}`,
    );
  }
  const decisionCacheTtlMs = p.int('decision_cache_ttl_ms', 30_000, 0, 86_400_000);
  if (fullRecheckIntervalMs > 0 && decisionCacheTtlMs > fullRecheckIntervalMs) {
    // A cached allow is a decision nobody re-asked: it must not outlive the bound on lost notifications.
    throw new ConfigError(
      path,
      'policy.decision_cache_ttl_ms',
      `must not exceed policy.revocation_full_recheck_interval_ms (${fullRecheckIntervalMs}), got ${decisionCacheTtlMs}`,
    );
  }

  return {
    path,
    server: {
      listenAddr: s.hostPort('listen_addr', '127.0.0.1:8443'),
      tlsCertPath: s.string('tls_cert_path'),
      tlsKeyPath: s.string('tls_key_path'),
      workers: s.int('workers', availableParallelism(), 1, 256),
      handshakeTimeoutMs: s.int('handshake_timeout_ms', 10_000, 100, 600_000),
      sessionIdleTimeoutMs: s.int('session_idle_timeout_ms', 300_000, 0, 86_400_000),
      drainTimeoutMs: s.int('drain_timeout_ms', 30_000, 0, 86_400_000),
      unprovenConnectionTimeoutMs: s.int('unproven_connection_timeout_ms', 10_000, 0, 86_400_000),
    },
    http2: {
      maxConcurrentStreams: h.int('max_concurrent_streams', 1000, 1, 100_000),
      maxConcurrentStreamsUnproven: h.int('max_concurrent_streams_unproven', 100, 1, 100_000),
      streamWindowBytes,
      connectionWindowBytes,
      maxSessionMemoryMb,
      maxHeaderListBytes: h.int('max_header_list_bytes', 16 * 1024, 1024, 1024 * 1024),
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
      maxConnections: p.int('max_connections', 5, 1, 1000),
      connectTimeoutMs: p.int('connect_timeout_ms', 5000, 1, 600_000),
      poolAcquireTimeoutMs: p.int('pool_acquire_timeout_ms', 1000, 1, 600_000),
      queryTimeoutMs: p.int('query_timeout_ms', 500, 1, 600_000),
      maxLookupsInFlight: p.int('max_lookups_in_flight', 32, 1, 100_000),
      recheckConnections: p.int('recheck_connections', 2, 1, 100),
      recheckQueryTimeoutMs: p.int('recheck_query_timeout_ms', 2000, 1, 600_000),
      revocationRecheckIntervalMs: p.int('revocation_recheck_interval_ms', 2000, 100, 3_600_000),
      revocationFullRecheckIntervalMs: fullRecheckIntervalMs,
      recheckUnavailableGraceMs: p.int('recheck_unavailable_grace_ms', 60_000, 0, 7 * 86_400_000),
      decisionCacheMaxEntries: p.int('decision_cache_max_entries', 10_000, 0, 10_000_000),
      decisionCacheTtlMs,
      denialCacheTtlMs: p.int('denial_cache_ttl_ms', 2_000, 0, 60_000),
    },
  };
}

/** Typed access to one TOML table; every error carries the dotted key. */
class Reader {
  constructor(
    private readonly file: string,
    private readonly table: Raw,
    private readonly prefix: string,
  ) {}

  private key(name: string): string {
    return this.prefix === '' ? name : `${this.prefix}.${name}`;
  }

  private fail(name: string, why: string): never {
    throw new ConfigError(this.file, this.key(name), why);
  }

  only(allowed: readonly string[]): void {
    for (const k of Object.keys(this.table)) {
      if (!allowed.includes(k)) this.fail(k, `unknown key (allowed here: ${allowed.join(', ')})`);
    }
  }

  section(name: string, required: boolean): Reader {
    const v = this.table[name];
    if (v === undefined) {
      if (required) this.fail(name, 'missing section');
      return new Reader(this.file, {}, this.key(name));
    }
    if (!isTable(v)) this.fail(name, 'must be a table');
    return new Reader(this.file, v, this.key(name));
  }

  string(name: string): string {
    const v = this.table[name];
    if (v === undefined) this.fail(name, 'missing (required)');
    if (typeof v !== 'string' || v.trim() === '') this.fail(name, 'must be a non-empty string');
    return v;
  }

  optionalString(name: string): string | undefined {
    const v = this.table[name];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') this.fail(name, 'must be a string');
    return v.trim() === '' ? undefined : v;
  }

  int(name: string, fallback: number, min: number, max: number): number {
    const v = this.table[name];
    if (v === undefined) return fallback;
    // smol-toml returns integers as number (or bigint beyond 2^53).
    const n = typeof v === 'bigint' ? Number(v) : v;
    // String() of a TOML inline table (a null-prototype object) throws a TypeError, not a ConfigError
    // (found by test/fuzz/config.fuzz.ts): describe tables and arrays by kind.
    if (typeof n !== 'number' || !Number.isInteger(n))
      this.fail(
        name,
        `must be an integer, got ${typeof v === 'object' ? kindOf(v) : JSON.stringify(String(v))}`,
      );
    if (n < min || n > max) this.fail(name, `must be between ${min} and ${max}, got ${n}`);
    return n;
  }

  hostPort(name: string, fallback: string): HostPort {
    const v = this.table[name] ?? fallback;
    if (typeof v !== 'string') this.fail(name, 'must be a "host:port" string');
    return parseHostPort(v, (why) => this.fail(name, why));
  }

  optionalHostPort(name: string, fallback: string): HostPort | undefined {
    const v = this.table[name] ?? fallback;
    if (v === '') return undefined;
    return this.hostPort(name, fallback);
  }

  oid(name: string, fallback: string): string {
    const v = this.table[name] ?? fallback;
    if (typeof v !== 'string' || !isValidOid(v)) this.fail(name, `must be a dotted OID such as ${fallback}`);
    return v;
  }

  logLevel(name: string): LogLevel {
    const v = this.table[name] ?? 'info';
    if (typeof v !== 'string') this.fail(name, 'must be a string such as "info"');
    const level = logLevelFromFilter(v);
    if (level === undefined)
      this.fail(
        name,
        `unknown level ${JSON.stringify(v)} (trace, debug, info, warn, error, or a filter like "agent_gateway=debug")`,
      );
    return level;
  }

  cidrs(name: string, fallback: readonly string[]): Cidr[] {
    const v = this.table[name] ?? fallback;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
      this.fail(name, 'must be an array of CIDR strings');
    return v.map((c: string, i: number) => {
      try {
        return parseCidr(c);
      } catch (err) {
        return this.fail(`${name}[${i}]`, (err as Error).message);
      }
    });
  }

  overrides(name: string): Map<string, HostPort> {
    const v = this.table[name];
    const out = new Map<string, HostPort>();
    if (v === undefined) return out;
    if (!isTable(v)) this.fail(name, 'must be a table of "destination" = "host:port"');
    for (const [dest, target] of Object.entries(v)) {
      const key = `${name}."${dest}"`;
      let normalized: string;
      try {
        normalized = normalizeDestination(dest).normalized;
      } catch (err) {
        this.fail(key, (err as Error).message);
      }
      if (typeof target !== 'string') this.fail(key, 'must be a "host:port" string');
      out.set(
        normalized,
        parseHostPort(target, (why) => this.fail(key, why)),
      );
    }
    return out;
  }

  databaseUrl(env: NodeJS.ProcessEnv): string {
    const direct = this.optionalString('database_url');
    const fromEnv = this.optionalString('database_url_env');
    if ((direct === undefined) === (fromEnv === undefined)) {
      this.fail('database_url', 'set exactly one of policy.database_url and policy.database_url_env');
    }
    if (direct !== undefined) return direct;
    const value = env[fromEnv as string];
    if (value === undefined || value.trim() === '') {
      this.fail('database_url_env', `environment variable ${fromEnv} is not set`);
    }
    return value;
  }
}

function kindOf(v: object | null): string {
  if (v instanceof Date) return 'a date-time';
  return Array.isArray(v) ? 'an array' : 'a table';
}

function isTable(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** `host:port` or `[v6]:port`, port 1..65535 (0 allowed for listeners would hide the port from operators). */
export function parseHostPort(text: string, fail: (why: string) => never): HostPort {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text.trim());
  if (m === null) return fail(`${JSON.stringify(text)} is not "host:port"`);
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return fail(`port ${port} is outside 1..65535`);
  return { host: (m[1] ?? m[2]) as string, port };
}

/**
 * The original took a Rust tracing filter ("info", "agent_gateway=debug,hyper=warn"). Honour the
 * directive for agent_gateway if there is one, else the bare default level.
 */
export function logLevelFromFilter(filter: string): LogLevel | undefined {
  const levels: readonly string[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
  const alias: Record<string, string> = { off: 'silent', warning: 'warn' };
  let chosen: string | undefined;
  let targeted: string | undefined;
  for (const part of filter
    .split(',')
    .map((x) => x.trim().toLowerCase())
    .filter(Boolean)) {
    const [target, level] = part.includes('=') ? (part.split('=', 2) as [string, string]) : [undefined, part];
    const name = alias[level] ?? level;
    if (!levels.includes(name)) return undefined;
    if (target === undefined) chosen = name;
    else if (target === 'agent_gateway' || target.startsWith('agent_gateway::')) targeted = name;
  }
  return (targeted ?? chosen ?? 'info') as LogLevel;
}
