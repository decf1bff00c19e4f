// policy.observe_identities (docs/contract.md "Access requests", observe mode): globs over the whole
// identity with only * and ?; an entry that is anything else is a ConfigError naming it.
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../gateway/config.js';

const BASE = `
[server]
tls_cert_path = "s.pem"
tls_key_path = "k.pem"
[observability]
[policy]
database_url = "postgresql://gw@127.0.0.1:5432/agent_gateway"
`;

function observe(entries: readonly string[]) {
  const text = `${BASE}observe_identities = ${JSON.stringify(entries)}\n`;
  return parseConfig(parseToml(text) as Record<string, unknown>, 'test.toml').policy.observeIdentities;
}

const matches = (globs: readonly string[], identity: string) => observe(globs).some((g) => g.test(identity));

describe('policy.observe_identities', () => {
  it('defaults to nobody', () => {
    const raw = parseToml(BASE) as Record<string, unknown>;
    expect(parseConfig(raw, 'test.toml').policy.observeIdentities).toEqual([]);
  });

  it('* and ? are the only wildcards, matched against the whole identity', () => {
    expect(matches(['agent-new-*'], 'agent-new-7')).toBe(true);
    expect(matches(['agent-new-*'], 'agent-new-')).toBe(true);
    expect(matches(['agent-new-*'], 'x-agent-new-7')).toBe(false);
    expect(matches(['agent-new-*'], 'agent-new')).toBe(false);
    expect(matches(['agent-?'], 'agent-b')).toBe(true);
    expect(matches(['agent-?'], 'agent-bb')).toBe(false);
    expect(matches(['agent-?'], 'agent-')).toBe(false);
    // Regular-expression characters are literal.
    expect(matches(['a.b+(c)'], 'a.b+(c)')).toBe(true);
    expect(matches(['a.b'], 'axb')).toBe(false);
    expect(matches(['ünï-*'], 'ünï-1')).toBe(true);
    expect(matches(['one', 'two-*'], 'two-x')).toBe(true);
  });

  it.each([
    ['agent-[abc]', 1],
    ['agent-{a,b}', 1],
    ['agent\\*', 1],
    ['', 1],
    ['*', 1],
    ['*?*', 1],
    ['tab\there', 1],
    ['x'.repeat(257), 1],
  ])('%j is a ConfigError naming the entry', (bad, index) => {
    const entries = ['agent-new-*', bad];
    let thrown: unknown;
    try {
      observe(entries);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(ConfigError);
    expect(String((thrown as Error).message)).toContain(`test.toml: policy.observe_identities[${index}]: `);
  });

  it('a value that is not a list of strings is a ConfigError', () => {
    const text = `${BASE}observe_identities = "agent-new-*"\n`;
    expect(() => parseConfig(parseToml(text) as Record<string, unknown>, 'test.toml')).toThrow(
      'test.toml: policy.observe_identities: must be an array of strings',
    );
  });
});
