// Replica reads (docs/contract.md "Replicas"): the config keys, pg_lsn parsing, which primary WAL
// position a replica answer must have reached (read again after every batch of registry changes), and
// the lookup router's primary-unreachable state, which must end when the primary answers again.
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import type { AccessRequest, Candidate } from '../../core/policy.js';
import type { Micros } from '../../core/timestamp.js';
import { ConfigError, parseConfig } from '../../gateway/config.js';
import { RegistryUnavailableError, silentLogger } from '../../gateway/registry-errors.js';
import { LookupRouter, type ReplicaSource } from '../../gateway/registry-replicas.js';
import { PrimaryWalPosition, parseLsn } from '../../gateway/registry-wal-position.js';

const BASE = `
[server]
tls_cert_path = "c.pem"
tls_key_path = "k.pem"
[observability]
[policy]
database_url = "postgresql://gw@127.0.0.1:5432/r"
`;

const parse = (extra: string, env: NodeJS.ProcessEnv = {}) =>
  parseConfig(parseToml(`${BASE}${extra}\n`) as Record<string, unknown>, 'test.toml', env).policy
    .replicaDatabaseUrls;

describe('policy.replica_database_url / replica_database_url_env', () => {
  it('none by default; a string, a list, and both keys together', () => {
    expect(parse('')).toEqual([]);
    expect(parse('replica_database_url = "postgresql://a/r"')).toEqual(['postgresql://a/r']);
    expect(
      parse(
        'replica_database_url = ["postgresql://a/r", "postgresql://b/r"]\nreplica_database_url_env = ["R3"]',
        { R3: 'postgresql://c/r' },
      ),
    ).toEqual(['postgresql://a/r', 'postgresql://b/r', 'postgresql://c/r']);
    expect(parse('replica_database_url_env = "R1"', { R1: 'postgresql://d/r' })).toEqual([
      'postgresql://d/r',
    ]);
  });

  it('an unset variable, an empty entry or a number is a ConfigError naming the key', () => {
    expect(() => parse('replica_database_url_env = ["R9"]')).toThrow(
      /policy\.replica_database_url_env: environment variable R9 is not set/,
    );
    expect(() => parse('replica_database_url = ["postgresql://a/r", ""]')).toThrow(ConfigError);
    expect(() => parse('replica_database_url = 5')).toThrow(/policy\.replica_database_url: must be/);
  });
});

describe('parseLsn', () => {
  it('reads both halves as hex into one 64-bit number, and nothing else', () => {
    expect(parseLsn('0/3000000')).toBe(0x3000000n);
    expect(parseLsn('16/B374D848')).toBe((0x16n << 32n) | 0xb374d848n);
    expect(parseLsn('FFFFFFFF/FFFFFFFF')).toBe(2n ** 64n - 1n);
    // Compared as text, 9/0 would sort after 10/0.
    expect(parseLsn('10/0')! > parseLsn('9/FFFFFFFF')!).toBe(true);
    for (const bad of [null, undefined, '', '0', '0/', '/1', '0/1/2', 'G/1', '123456789/0'])
      expect(parseLsn(bad)).toBeUndefined();
  });
});

describe('PrimaryWalPosition', () => {
  it('reads once at start, then again only after a change, however many lookups ask', async () => {
    const reads: string[] = ['0/10', '0/20'];
    let calls = 0;
    const pos = new PrimaryWalPosition(async () => {
      calls++;
      return reads.shift()!;
    });
    expect(await Promise.all([pos.required(), pos.required()])).toEqual([0x10n, 0x10n]);
    expect(await pos.required()).toBe(0x10n);
    expect(calls).toBe(1);
    pos.changed();
    expect(await pos.required()).toBe(0x20n);
    expect(calls).toBe(2);
  });

  it('a change during a read in flight makes a lookup wait for a read started after it', async () => {
    let release: ((lsn: string) => void) | undefined;
    const answers: string[] = [];
    const pos = new PrimaryWalPosition(
      () =>
        new Promise<string>((resolve) => {
          release = resolve;
          answers.push('pending');
        }),
    );
    const first = pos.required();
    await Promise.resolve();
    pos.changed(); // arrives while the first read is in flight
    const second = pos.required();
    release!('0/100');
    expect(await first).toBe(0x100n);
    let settled = false;
    void second.then(() => {
      settled = true;
    });
    await new Promise((r) => setTimeout(r, 10));
    // The read in flight started before the change: `second` waits for the next one.
    expect(settled).toBe(false);
    expect(answers.length).toBe(2);
    release!('0/200');
    expect(await second).toBe(0x200n);
  });

  it('a failing primary makes required() throw, and the next call reads again', async () => {
    let fail = true;
    const pos = new PrimaryWalPosition(async () => {
      if (fail) throw new Error('connect ECONNREFUSED');
      return '1/0';
    });
    await expect(pos.required()).rejects.toThrow(/ECONNREFUSED/);
    fail = false;
    expect(await pos.required()).toBe(0x100000000n);
  });
});

describe('LookupRouter without the change listener (schema < 3, or LISTEN not back)', () => {
  const request: AccessRequest = { identity: 'a', spkiDer: Buffer.alloc(1), destination: 'x.test:443' };
  const fromPrimary = [{ from: 'primary' }] as unknown as Candidate[];
  const fromReplica = [{ from: 'replica' }] as unknown as Candidate[];

  function setUp() {
    const state = { primaryUp: true, primaryCalls: 0, replicaCalls: 0 };
    const down = () => new RegistryUnavailableError('connect', 'connect ECONNREFUSED 127.0.0.1:5432');
    const replica: ReplicaSource = {
      name: 'replica_1',
      usable: true,
      caughtUpCandidates: async () => {
        throw new Error('no position can be required without the listener');
      },
      anyCandidates: async () => {
        state.replicaCalls++;
        return { candidates: fromReplica, replay: 0n };
      },
      succeeded() {},
      failed() {},
      close: async () => {},
    };
    const router = new LookupRouter({
      replicas: [replica],
      primary: async () => {
        state.primaryCalls++;
        if (!state.primaryUp) throw down();
        return fromPrimary;
      },
      primaryWalLsn: async () => {
        if (!state.primaryUp) throw down();
        return '0/10';
      },
      logger: silentLogger,
      probeInitialDelayMs: 20,
    });
    router.setListening(() => false);
    return { state, router, lookup: () => router.activeCandidates(request, 0n as Micros) };
  }

  it('asks the primary while it answers; a replica only once it cannot be reached', async () => {
    const { state, router, lookup } = setUp();
    expect(await lookup()).toBe(fromPrimary);
    expect(state.replicaCalls).toBe(0);
    expect(router.degraded).toBeUndefined();
    state.primaryUp = false;
    expect(await lookup()).toBe(fromReplica);
    expect(router.degraded).toMatch(/registry primary unreachable: .*ECONNREFUSED/);
    // In the state, lookups do not wait for the primary first.
    const calls = state.primaryCalls;
    expect(await lookup()).toBe(fromReplica);
    expect(state.primaryCalls).toBe(calls);
    await router.close();
  });

  it('the state ends when the primary answers a probe, with the listener still down', async () => {
    const { state, router, lookup } = setUp();
    state.primaryUp = false;
    expect(await lookup()).toBe(fromReplica);
    await new Promise((r) => setTimeout(r, 100));
    // Still down: probes failed and keep the state.
    expect(router.degraded).toBeDefined();
    state.primaryUp = true;
    await expect.poll(() => router.degraded, { timeout: 2000 }).toBeUndefined();
    const replicaCalls = state.replicaCalls;
    expect(await lookup()).toBe(fromPrimary);
    expect(state.replicaCalls).toBe(replicaCalls);
    await router.close();
  });

  it('only a primary that cannot be reached at all starts the state; with the listener up, never', async () => {
    const { router } = setUp();
    expect(router.primaryFailed(new RegistryUnavailableError('query', 'syntax error'))).toBe(false);
    expect(router.primaryFailed(new RegistryUnavailableError('query_timeout', 'slow'))).toBe(false);
    expect(router.degraded).toBeUndefined();
    router.setListening(() => true);
    expect(router.primaryFailed(new RegistryUnavailableError('connect', 'ECONNREFUSED'))).toBe(false);
    router.setListening(() => false);
    expect(router.primaryFailed(new RegistryUnavailableError('acquire_timeout', 'no connection'))).toBe(true);
    expect(router.degraded).toMatch(/no connection/);
    router.primaryAnswered();
    expect(router.degraded).toBeUndefined();
    await router.close();
  });
});
