// Replica reads (docs/contract.md "Replicas"): the config keys, pg_lsn parsing, and which primary WAL
// position a replica answer must have reached (read again after every batch of registry changes).
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../gateway/config.js';
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
