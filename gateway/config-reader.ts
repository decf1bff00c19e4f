/**
 * Typed reads of one TOML table for gateway/config.ts. Every error is a ConfigError naming the file and
 * the dotted key. Each read records its dotted key, so the keys the loader knows are the keys it reads:
 * config.ts collects them once (CONFIG_KEYS) and rejects any other key in a file before reading it.
 */
import { normalizeDestination } from '../core/destination.js';
import { errorText } from '../core/error-text.js';
import { type HostPort, parseHostPort } from '../core/host-port.js';
import { isValidOid } from '../core/identity-extension.js';
import { type Cidr, parseCidr } from './address-guard.js';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export type { HostPort } from '../core/host-port.js';

export type Raw = Record<string, unknown>;

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

/** Typed access to one TOML table; every error carries the dotted key. */
export class ConfigReader {
  /** `read` collects the dotted key of every value read through this reader and its sections. */
  constructor(
    private readonly file: string,
    private readonly table: Raw,
    private readonly prefix: string,
    private readonly read: Set<string>,
  ) {}

  private key(name: string): string {
    return this.prefix === '' ? name : `${this.prefix}.${name}`;
  }

  /** A ConfigError naming this table's key `name` (for checks made after reading). */
  fail(name: string, why: string): never {
    throw new ConfigError(this.file, this.key(name), why);
  }

  private value(name: string): unknown {
    this.read.add(this.key(name));
    return this.table[name];
  }

  /**
   * Throws on the first key of this table (and of its known sections) that is not in `known` (dotted
   * keys as CONFIG_KEYS lists them): a misspelled limit that silently fell back to its default would
   * be a security bug.
   */
  rejectUnknown(known: readonly string[]): void {
    const here = this.prefix === '' ? '' : `${this.prefix}.`;
    const allowed = [
      ...new Set(
        known.filter((k) => k.startsWith(here)).map((k) => k.slice(here.length).split('.')[0] as string),
      ),
    ];
    for (const [name, v] of Object.entries(this.table)) {
      if (!allowed.includes(name)) this.fail(name, `unknown key (allowed here: ${allowed.join(', ')})`);
      const dotted = this.key(name);
      if (isTable(v) && known.some((k) => k.startsWith(`${dotted}.`))) {
        new ConfigReader(this.file, v, dotted, this.read).rejectUnknown(known);
      }
    }
  }

  section(name: string, required: boolean): ConfigReader {
    const v = this.table[name];
    if (v === undefined) {
      if (required) this.fail(name, 'missing section');
      return new ConfigReader(this.file, {}, this.key(name), this.read);
    }
    if (!isTable(v)) this.fail(name, 'must be a table');
    return new ConfigReader(this.file, v, this.key(name), this.read);
  }

  string(name: string): string {
    const v = this.value(name);
    if (v === undefined) this.fail(name, 'missing (required)');
    if (typeof v !== 'string' || v.trim() === '') this.fail(name, 'must be a non-empty string');
    return v;
  }

  optionalString(name: string): string | undefined {
    const v = this.value(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') this.fail(name, 'must be a string');
    return v.trim() === '' ? undefined : v;
  }

  int(name: string, fallback: number, min: number, max: number): number {
    const v = this.value(name);
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

  bool(name: string, fallback: boolean): boolean {
    const v = this.value(name);
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') this.fail(name, 'must be true or false');
    return v;
  }

  /** One of `allowed` (a string). */
  choice<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const v = this.value(name) ?? fallback;
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v))
      this.fail(name, `must be one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`);
    return v as T;
  }

  hostPort(name: string, fallback: string): HostPort {
    const v = this.value(name) ?? fallback;
    if (typeof v !== 'string') this.fail(name, 'must be a "host:port" string');
    return hostPortOrFail(v, (why) => this.fail(name, why));
  }

  optionalHostPort(name: string, fallback: string): HostPort | undefined {
    const v = this.value(name) ?? fallback;
    if (v === '') return undefined;
    return this.hostPort(name, fallback);
  }

  oid(name: string, fallback: string): string {
    const v = this.value(name) ?? fallback;
    if (typeof v !== 'string' || !isValidOid(v)) this.fail(name, `must be a dotted OID such as ${fallback}`);
    return v;
  }

  logLevel(name: string): LogLevel {
    const v = this.value(name) ?? 'info';
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
    const v = this.value(name) ?? fallback;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
      this.fail(name, 'must be an array of CIDR strings');
    return v.map((c: string, i: number) => {
      try {
        return parseCidr(c);
      } catch (err) {
        return this.fail(`${name}[${i}]`, errorText(err));
      }
    });
  }

  /**
   * An array of strings, each mapped by `parse`; an entry it throws on is a ConfigError naming
   * `name[index]`.
   */
  list<T>(name: string, parse: (entry: string) => T): T[] {
    const v = this.value(name) ?? [];
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
      this.fail(name, 'must be an array of strings');
    return v.map((entry: string, i: number) => {
      try {
        return parse(entry);
      } catch (err) {
        return this.fail(`${name}[${i}]`, errorText(err));
      }
    });
  }

  /** A table whose keys are destinations (normalized like grants) and whose values are "host:port". */
  overrides(name: string): Map<string, HostPort> {
    const v = this.value(name);
    const out = new Map<string, HostPort>();
    if (v === undefined) return out;
    if (!isTable(v)) this.fail(name, 'must be a table of "destination" = "host:port"');
    for (const [dest, target] of Object.entries(v)) {
      const key = `${name}."${dest}"`;
      let normalized: string;
      try {
        normalized = normalizeDestination(dest).normalized;
      } catch (err) {
        this.fail(key, errorText(err));
      }
      if (typeof target !== 'string') this.fail(key, 'must be a "host:port" string');
      out.set(
        normalized,
        hostPortOrFail(target, (why) => this.fail(key, why)),
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

  /**
   * policy.replica_database_url and replica_database_url_env: each a string or an array of strings (URLs,
   * or names of environment variables holding one), both optional, together any number of replicas.
   */
  replicaDatabaseUrls(env: NodeJS.ProcessEnv): string[] {
    const strings = (name: string): string[] => {
      const v = this.value(name);
      if (v === undefined) return [];
      const list = typeof v === 'string' ? [v] : v;
      if (!Array.isArray(list) || !list.every((x) => typeof x === 'string' && x.trim() !== ''))
        this.fail(name, 'must be a non-empty string or an array of them');
      return list as string[];
    };
    const fromEnv = strings('replica_database_url_env').map((name) => {
      const value = env[name];
      if (value === undefined || value.trim() === '')
        this.fail('replica_database_url_env', `environment variable ${name} is not set`);
      return value;
    });
    return [...strings('replica_database_url'), ...fromEnv];
  }
}

function kindOf(v: object | null): string {
  if (v instanceof Date) return 'a date-time';
  return Array.isArray(v) ? 'an array' : 'a table';
}

function isTable(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** `host:port` or `[v6]:port` (core/host-port.ts), port 1..65535: port 0 would hide a listener's port. */
function hostPortOrFail(text: string, fail: (why: string) => never): HostPort {
  const parsed = parseHostPort(text);
  if (parsed.ok) return parsed.value;
  switch (parsed.problem) {
    case 'syntax':
      return fail(`${JSON.stringify(text)} is not "host:port"`);
    case 'not_ipv6':
      return fail(`${parsed.host} in brackets is not an IPv6 address`);
    case 'port_range':
      return fail(`port ${parsed.port} is outside 1..65535`);
  }
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
