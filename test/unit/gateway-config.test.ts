// Gateway config (docs/contract.md "Configuration"): an original-style file loads with every new key
// defaulted; every mistake is a ConfigError naming the file and the dotted key.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../../dev-support/repo-root.js';
import {
  CONFIG_KEYS,
  ConfigError,
  DEFAULT_DENY_CIDRS,
  defaultWorkers,
  loadConfig,
} from '../../gateway/config.js';
import { ENV, ORIGINAL, parse, withLine } from './fixtures/gateway-config-text.js';

describe('gateway config: an original-style file', () => {
  it('loads, with every key this project added at its default', () => {
    const c = parse(ORIGINAL);
    expect(c.server).toMatchObject({
      listenAddr: { host: '127.0.0.1', port: 8443 },
      tlsCertPath: 'certs/server.pem',
      tlsKeyPath: 'certs/server-key.pem',
      handshakeTimeoutMs: 10_000,
      sessionIdleTimeoutMs: 300_000,
      unprovenConnectionTimeoutMs: 10_000,
      drainTimeoutMs: 30_000,
    });
    expect(c.server.workers).toBe(os.availableParallelism() <= 2 ? 1 : os.availableParallelism());
    expect([1, 2, 3, 8].map((cpus) => defaultWorkers(cpus))).toEqual([1, 1, 3, 8]);
    expect(c.http2).toEqual({
      maxConcurrentStreams: 1000,
      maxConcurrentStreamsUnproven: 100,
      streamWindowBytes: 4 * 1024 * 1024,
      connectionWindowBytes: 32 * 1024 * 1024,
      maxSessionMemoryMb: 128,
      maxHeaderListBytes: 16 * 1024,
      maxFrameSize: 256 * 1024,
      maxResetsPer10s: 200,
    });
    expect(c.limits).toEqual({
      maxConnections: 10_000,
      maxTunnels: 20_000,
      maxTunnelsPerIdentity: 1_000,
      connectRatePerIdentity: 200,
      connectBurstPerIdentity: 400,
      maxConnectionsPerAddress: 1_000,
      maxUnprovenConnectionsPerAddress: 64,
      deniedConnectRatePerAddress: 20,
      deniedConnectBurstPerAddress: 200,
    });
    expect(c.upstream.connectTimeoutMs).toBe(10_000);
    expect(c.upstream.tunnelIdleTimeoutMs).toBe(3_600_000);
    expect(c.upstream.denyCidrs.map((x) => x.text)).toEqual(DEFAULT_DENY_CIDRS);
    expect(c.upstream.allowCidrs).toEqual([]);
    expect(c.upstream.overrides.size).toBe(0);
    expect(c.admin.listenAddr).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(c.observability).toEqual({ logLevel: 'info', otlpEndpoint: undefined, logStdout: true });
    expect(c.policy).toEqual({
      clientExtOid: '1.3.6.1.4.1.57264.1.1',
      databaseUrl: ENV.AGENT_GATEWAY_DATABASE_URL,
      replicaDatabaseUrls: [],
      maxConnections: 5,
      connectTimeoutMs: 5000,
      poolAcquireTimeoutMs: 1000,
      queryTimeoutMs: 500,
      maxLookupsInFlight: 32,
      recheckConnections: 2,
      recheckQueryTimeoutMs: 2000,
      revocationRecheckIntervalMs: 2000,
      revocationFullRecheckIntervalMs: 30_000,
      recheckUnavailableGraceMs: 60_000,
      decisionCacheMaxEntries: 10_000,
      decisionCacheTtlMs: 30_000,
      denialCacheTtlMs: 2000,
      trustRoots: new Map(),
      observeIdentities: [],
    });
    expect(c.requests).toEqual({
      enabled: true,
      maxPending: 10_000,
      ratePerIdentity: 60,
      flushIntervalMs: 250,
      dismissQuietHours: 24,
      holdMs: 0,
      maxHeld: 100,
      maxHeldPerIdentity: 10,
    });
  });

  it('config.example.toml loads as-is and states exactly the defaults', () => {
    const example = loadConfig(path.join(repoRoot, 'config.example.toml'), ENV);
    const minimal = parse(ORIGINAL);
    expect({ ...example, path: '' }).toEqual({ ...minimal, path: '' });
  });

  it('config.example.toml shows exactly the keys the loader knows, each in its section', () => {
    const text = readFileSync(path.join(repoRoot, 'config.example.toml'), 'utf8');
    // Active or commented-out `key = ` lines, dotted with their [section]; a [section.table] header is a key.
    const shown: string[] = [];
    let section = '';
    for (const line of text.split('\n')) {
      const header = /^\[([a-z0-9_.]+)\]$/.exec(line);
      if (header !== null) {
        section = header[1] as string;
        if (section.includes('.')) shown.push(section);
        continue;
      }
      const key = /^(?:# )?([a-z0-9_]+) = /.exec(line);
      if (key !== null) shown.push(`${section}.${key[1]}`);
    }
    expect(CONFIG_KEYS.length).toBeGreaterThan(40);
    expect(CONFIG_KEYS.filter((k) => !shown.includes(k))).toEqual([]);
    expect(shown.filter((k) => !CONFIG_KEYS.includes(k))).toEqual([]);
  });

  it('loads from a file and names that file in errors', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'agw-config-'));
    const good = path.join(dir, 'good.toml');
    writeFileSync(good, ORIGINAL);
    expect(loadConfig(good, ENV).path).toBe(good);
    const bad = path.join(dir, 'bad.toml');
    writeFileSync(bad, withLine('server', 'listen_adr = "127.0.0.1:1"'));
    expect(() => loadConfig(bad, ENV)).toThrow(`${bad}: server.listen_adr: unknown key`);
    const syntax = path.join(dir, 'syntax.toml');
    writeFileSync(syntax, '[server\n');
    expect(() => loadConfig(syntax, ENV)).toThrow(ConfigError);
    expect(() => loadConfig(path.join(dir, 'missing.toml'), ENV)).toThrow(/cannot read/);
  });

  it('turns stdout logs off with AGENT_GATEWAY_LOG_STDOUT=false', () => {
    expect(parse(ORIGINAL, { ...ENV, AGENT_GATEWAY_LOG_STDOUT: 'false' }).observability.logStdout).toBe(
      false,
    );
    expect(parse(ORIGINAL, { ...ENV, AGENT_GATEWAY_LOG_STDOUT: 'true' }).observability.logStdout).toBe(true);
  });

  it('accepts the original Rust tracing filters for log_level', () => {
    const level = (f: string) =>
      parse(ORIGINAL.replace('log_level = "info"', `log_level = "${f}"`)).observability.logLevel;
    expect(level('debug')).toBe('debug');
    expect(level('agent_gateway=debug,hyper=warn')).toBe('debug');
    expect(level('warn,agent_gateway=trace')).toBe('trace');
    expect(level('off')).toBe('silent');
  });

  it('normalizes upstream override keys like grants', () => {
    const c = parse(
      `${ORIGINAL}\n[upstream.overrides]\n"DocStore" = "127.0.0.1:9443"\n"[0:0::1]:8443" = "[::1]:8443"\n`,
    );
    expect(c.upstream.overrides.get('docstore:443')).toEqual({ host: '127.0.0.1', port: 9443 });
    expect(c.upstream.overrides.get('[::1]:8443')).toEqual({ host: '::1', port: 8443 });
  });

  it('takes database_url directly as well', () => {
    const c = parse(
      ORIGINAL.replace('database_url_env = "AGENT_GATEWAY_DATABASE_URL"', 'database_url = "postgres://x/y"'),
      {},
    );
    expect(c.policy.databaseUrl).toBe('postgres://x/y');
  });
});

describe('gateway config: every mistake names its key', () => {
  const cases: { name: string; text: string; env?: NodeJS.ProcessEnv; error: RegExp }[] = [
    {
      name: 'unknown top-level section',
      text: `${ORIGINAL}\n[sever]\nx = 1\n`,
      error: /test\.toml: sever: unknown key/,
    },
    {
      name: 'unknown key in [server]',
      text: withLine('server', 'listen_adr = "1.2.3.4:5"'),
      error: /server\.listen_adr: unknown key/,
    },
    {
      name: 'unknown key in [policy]',
      text: withLine('policy', 'query_timeout = 5'),
      error: /policy\.query_timeout: unknown key/,
    },
    {
      name: 'unknown key in a new section',
      text: withLine('upstream', 'conect_timeout_ms = 5'),
      error: /upstream\.conect_timeout_ms: unknown key/,
    },
    {
      name: 'missing tls_cert_path',
      text: ORIGINAL.replace('tls_cert_path = "certs/server.pem"\n', ''),
      error: /server\.tls_cert_path: missing/,
    },
    {
      name: 'missing [policy]',
      text: ORIGINAL.slice(0, ORIGINAL.indexOf('[policy]')),
      error: /policy: missing section/,
    },
    {
      name: 'missing [observability]',
      text: ORIGINAL.replace('[observability]\nlog_level = "info"\n', ''),
      error: /observability: missing section/,
    },
    {
      name: 'wrong type: string for an integer',
      text: ORIGINAL.replace('query_timeout_ms = 500', 'query_timeout_ms = "500"'),
      error: /policy\.query_timeout_ms: must be an integer/,
    },
    {
      name: 'wrong type: float for an integer',
      text: withLine('limits', 'max_tunnels = 1.5'),
      error: /limits\.max_tunnels: must be an integer/,
    },
    {
      name: 'wrong type: integer for a string',
      text: ORIGINAL.replace('tls_key_path = "certs/server-key.pem"', 'tls_key_path = 7'),
      error: /server\.tls_key_path: must be a non-empty string/,
    },
    {
      name: 'wrong type: section is a value',
      text: `http2 = 5\n${ORIGINAL}`,
      error: /http2: must be a table/,
    },
    {
      name: 'wrong type: string for a boolean',
      text: withLine('requests', 'enabled = "false"'),
      error: /requests\.enabled: must be true or false/,
    },
    {
      name: 'out of range',
      text: withLine('server', 'workers = 0'),
      error: /server\.workers: must be between 1 and 256/,
    },
    {
      name: 'max frame size under the RFC 9113 floor',
      text: withLine('http2', 'max_frame_size = 16383'),
      error: /http2\.max_frame_size: must be between 16384 and 16777215, got 16383/,
    },
    {
      name: 'max frame size over the RFC 9113 ceiling',
      text: withLine('http2', 'max_frame_size = 16777216'),
      error: /http2\.max_frame_size: must be between 16384 and 16777215, got 16777216/,
    },
    {
      name: 'no connection allowed per address',
      text: withLine('limits', 'max_connections_per_address = 0'),
      error: /limits\.max_connections_per_address: must be between 1 and 1000000, got 0/,
    },
    {
      name: 'negative unproven-connection deadline',
      text: withLine('server', 'unproven_connection_timeout_ms = -1'),
      error: /server\.unproven_connection_timeout_ms: must be between 0 and 86400000, got -1/,
    },
    {
      name: 'empty denied-CONNECT burst per address',
      text: withLine('limits', 'denied_connect_burst_per_address = 0'),
      error: /limits\.denied_connect_burst_per_address: must be between 1 and 10000000, got 0/,
    },
    {
      name: 'bad listen address',
      text: ORIGINAL.replace('127.0.0.1:8443', '127.0.0.1'),
      error: /server\.listen_addr: .* is not "host:port"/,
    },
    {
      name: 'listen port 0',
      text: ORIGINAL.replace('127.0.0.1:8443', '127.0.0.1:0'),
      error: /server\.listen_addr: port 0/,
    },
    {
      name: 'listen address in brackets that is not IPv6',
      text: ORIGINAL.replace('127.0.0.1:8443', '[127.0.0.1]:8443'),
      error: /server\.listen_addr: 127\.0\.0\.1 in brackets is not an IPv6 address/,
    },
    {
      name: 'bad OID',
      text: ORIGINAL.replace('1.3.6.1.4.1.57264.1.1', 'not-an-oid'),
      error: /policy\.client_ext_oid: must be a dotted OID/,
    },
    {
      name: 'bad log level',
      text: ORIGINAL.replace('log_level = "info"', 'log_level = "loud"'),
      error: /observability\.log_level: unknown level/,
    },
    {
      name: 'both database_url and database_url_env',
      text: withLine('policy', 'database_url = "postgres://x/y"'),
      error: /policy\.database_url: set exactly one of policy\.database_url and policy\.database_url_env/,
    },
    {
      name: 'neither database_url nor database_url_env',
      text: ORIGINAL.replace('database_url_env = "AGENT_GATEWAY_DATABASE_URL"\n', ''),
      error: /policy\.database_url: set exactly one/,
    },
    {
      name: 'database_url_env names an unset variable',
      text: ORIGINAL,
      env: {},
      error: /policy\.database_url_env: environment variable AGENT_GATEWAY_DATABASE_URL is not set/,
    },
    {
      name: 'bad deny CIDR',
      text: withLine('upstream', 'deny_cidrs = ["10.0.0.0/33"]'),
      error: /upstream\.deny_cidrs\[0\]: .*prefix/,
    },
    {
      name: 'CIDR list of the wrong type',
      text: withLine('upstream', 'allow_cidrs = "127.0.0.0/8"'),
      error: /upstream\.allow_cidrs: must be an array/,
    },
    {
      name: 'override with an invalid destination',
      text: `${ORIGINAL}\n[upstream.overrides]\n"bad host" = "127.0.0.1:1"\n`,
      error: /upstream\.overrides\."bad host"/,
    },
    {
      name: 'override target without a port',
      text: `${ORIGINAL}\n[upstream.overrides]\n"docstore" = "127.0.0.1"\n`,
      error: /upstream\.overrides\."docstore": .* is not "host:port"/,
    },
    {
      name: 'connection window below the stream window',
      text: withLine('http2', 'stream_window_bytes = 8388608\nconnection_window_bytes = 1048576'),
      error: /http2\.connection_window_bytes: must be at least http2\.stream_window_bytes/,
    },
    {
      name: 'session memory too small for the window',
      text: withLine('http2', 'max_session_memory_mb = 8'),
      error: /http2\.max_session_memory_mb: must exceed twice/,
    },
    {
      name: 'full re-check interval below a second',
      text: withLine('policy', 'revocation_full_recheck_interval_ms = 500'),
      error: /policy\.revocation_full_recheck_interval_ms: must be 0 \(off\) or at least 1000/,
    },
    {
      name: 'decision cache outliving the full re-check interval',
      text: withLine('policy', 'revocation_full_recheck_interval_ms = 10000\ndecision_cache_ttl_ms = 20000'),
      error:
        /policy\.decision_cache_ttl_ms: must not exceed policy\.revocation_full_recheck_interval_ms \(10000\)/,
    },
  ];

  it.each(cases)('$name', ({ text, env, error }) => {
    let thrown: unknown;
    try {
      parse(text, env ?? ENV);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    expect((thrown as Error).message).toMatch(error);
  });
});
