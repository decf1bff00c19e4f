/**
 * Properties of the gateway config loader (gateway/config.ts, keys in docs/contract.md): whatever TOML
 * text an operator writes, loadConfig returns a config or throws ConfigError, and every error names the
 * file and the key (the dotted key the mistake is in, or "(syntax)" for text that is not TOML).
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as fc from 'fast-check';
import { CONFIG_KEYS, ConfigError, loadConfig } from '../../gateway/config.js';
import { FULL_RUNS, type FuzzTarget, onlyThrows } from './fuzz-target.js';

const ENV = { AGW_FUZZ_DATABASE_URL: 'postgres://fuzz@127.0.0.1:1/fuzz' };

let dir: string | undefined;
/**
 * One scratch file per process, rewritten for every input: loadConfig reads a path, as main.ts does.
 * On tmpfs (/dev/shm) when there is one: a disk write per input costs a hundred times the parse.
 */
function configFile(text: string): string {
  dir ??= mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'agw-fuzz-config-'));
  const file = path.join(dir, 'gateway.toml');
  writeFileSync(file, text);
  return file;
}

export function removeConfigScratch(): void {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
}

/** Every key the loader knows, by section ("upstream.overrides" is the key overrides of [upstream]). */
const KEYS: Record<string, string[]> = {};
for (const dotted of CONFIG_KEYS) {
  const [section, key] = dotted.split('.', 2) as [string, string];
  KEYS[section] = [...(KEYS[section] ?? []), key];
}
const SECTIONS = Object.keys(KEYS);

/** A config that loads: the required keys only. */
const BASE: Record<string, Record<string, string>> = {
  server: { tls_cert_path: '"/etc/agw/cert.pem"', tls_key_path: '"/etc/agw/key.pem"' },
  observability: {},
  policy: { database_url_env: '"AGW_FUZZ_DATABASE_URL"' },
};

/** TOML value literals, as text: every type, edge numbers, odd strings, and a few malformed ones. */
const tomlValue: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '0',
    '1',
    '-1',
    '2',
    '100',
    '65535',
    '65536',
    '2147483647',
    '2147483648',
    '9007199254740993',
    '9223372036854775807',
    '99999999999999999999',
    '1.0',
    '1.5',
    '-0.0',
    '1e3',
    'inf',
    '-inf',
    'nan',
    '0x10',
    '0o17',
    '0b101',
    '1_000',
    '01',
    'true',
    'false',
    '""',
    '" "',
    '"\\t"',
    '"info"',
    '"trace,agent_gateway=debug"',
    '"agent_gateway="',
    '"1.3.6.1.4.1.57264.1.1"',
    '"1.3"',
    '"127.0.0.1:8443"',
    '"[::1]:0"',
    '"[::1]:443"',
    '"host:99999"',
    '"localhost"',
    '""""""',
    "'lit'",
    '"\\u0000"',
    '[]',
    '[1]',
    '["10.0.0.0/8"]',
    '["::/0", "256.0.0.0/8"]',
    '["10.0.0.0/33"]',
    '[[1], ["a"]]',
    '{}',
    '{ a = 1 }',
    '{ "api.example.com:443" = "127.0.0.1:9" }',
    '{ "bad host" = "127.0.0.1:9" }',
    '{ "a.example:443" = 1 }',
    '1979-05-27T07:32:00Z',
    '1979-05-27',
    '07:32:00',
    '"AGW_UNSET_VARIABLE"',
  ),
  fc.integer().map(String),
  fc.double().map((d) => (Number.isFinite(d) ? d.toExponential() : String(d).toLowerCase())),
  fc.string({ maxLength: 20 }).map((s) => JSON.stringify(s)),
  fc.string({ unit: 'binary', maxLength: 12 }).map((s) => JSON.stringify(s)),
);

type Mutation = { readonly section: string; readonly key: string | undefined; readonly value: string };

/** One change: a key of a known section set to a value, an unknown key, or a whole section replaced. */
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.constantFrom(...SECTIONS).chain((section) =>
      fc.record({
        section: fc.constant(section),
        key: fc.constantFrom(...(KEYS[section] ?? [])),
        value: tomlValue,
      }),
    ),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      section: fc.constantFrom(...SECTIONS, 'tls', 'Server'),
      key: fc.constantFrom('fuzz_unknown', 'Workers', 'max-connections', ''),
      value: tomlValue,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      section: fc.constantFrom(...SECTIONS),
      key: fc.constant(undefined),
      value: tomlValue,
    }),
  },
);

function renderKey(key: string): string {
  return /^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key);
}

/** The base config with the mutations applied, as TOML text (sections replaced by a value go first). */
function render(mutations: readonly Mutation[]): string {
  const tables = new Map<string, Map<string, string>>(
    Object.entries(BASE).map(([s, kv]) => [s, new Map(Object.entries(kv))]),
  );
  const replaced = new Map<string, string>();
  for (const m of mutations) {
    if (m.key === undefined) {
      replaced.set(m.section, m.value);
      tables.delete(m.section);
    } else {
      replaced.delete(m.section);
      const t = tables.get(m.section) ?? new Map<string, string>();
      t.set(m.key, m.value);
      tables.set(m.section, t);
    }
  }
  const lines = [...replaced].map(([s, v]) => `${renderKey(s)} = ${v}`);
  for (const [s, kv] of tables) {
    lines.push(`[${renderKey(s)}]`);
    for (const [k, v] of kv) lines.push(`${renderKey(k)} = ${v}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Where a mutation may be reported: its own key (or an element of it), its section, or a missing key of BASE. */
function namesMutation(errKey: string, mutations: readonly Mutation[]): boolean {
  return mutations.some(
    (m) => errKey === m.section || errKey.startsWith(`${m.section}.`) || errKey.startsWith(`${m.section}[`),
  );
}

/** Text an operator might produce: TOML tokens in random order, and arbitrary text. */
const TOKENS = [
  '\n',
  '\n',
  ' ',
  '=',
  '[',
  ']',
  '[[',
  ']]',
  '{',
  '}',
  ',',
  '.',
  '"',
  "'",
  '"""',
  '#',
  'server',
  'policy',
  'http2',
  'limits',
  'upstream',
  'overrides',
  'workers',
  'listen_addr',
  'database_url',
  'log_level',
  'tls_cert_path',
  '1',
  '-',
  '0x',
  'inf',
  'true',
  '1979-05-27',
  '"x"',
  '\\u0000',
  '\t',
  '\r\n',
];
const tomlText = fc.oneof(
  fc.array(fc.constantFrom(...TOKENS), { maxLength: 40 }).map((t) => t.join('')),
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.array(mutation, { maxLength: 4 }).map(render),
);

type Loaded = ReturnType<typeof loadConfig>;
const load = (text: string) => {
  const file = configFile(text);
  return { file, result: onlyThrows<Loaded>(() => loadConfig(file, ENV), ConfigError) };
};

/** A ConfigError names this file and a non-empty key, and its message starts with both. */
function namesFileAndKey(err: Error, file: string): err is ConfigError {
  return (
    err instanceof ConfigError &&
    err.file === file &&
    err.key !== '' &&
    err.message.startsWith(`${file}: ${err.key}: `)
  );
}

export const configTarget: FuzzTarget = {
  name: 'config loader (gateway/config.ts)',
  fullRuns: FULL_RUNS,
  properties: [
    {
      name: 'any text: loads, or throws ConfigError naming the file and a key',
      property: fc.property(tomlText, (text) => {
        const { file, result } = load(text);
        return 'value' in result || namesFileAndKey(result.error, file);
      }),
    },
    {
      name: 'a valid config with changed values: loads, or the ConfigError names the changed key or its section',
      property: fc.property(fc.array(mutation, { minLength: 0, maxLength: 3 }), (mutations) => {
        const { file, result } = load(render(mutations));
        if ('value' in result) return true;
        const err = result.error;
        if (!namesFileAndKey(err, file)) return false;
        // No change at all must load; a change that breaks TOML itself is "(syntax)".
        return mutations.length > 0 && (err.key === '(syntax)' || namesMutation(err.key, mutations));
      }),
    },
  ],
};
