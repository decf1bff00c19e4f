/**
 * Writes the demo's config.toml from config.example.toml: the example's text (comments and all) with the
 * demo's values put in place, so a reader sees the documented file plus the handful of lines the demo
 * changed. Then the result is loaded with the gateway's own config loader, so a value the gateway would
 * refuse fails here, during setup, with the gateway's message.
 *
 *   node dist/demo/write-config.js --example config.example.toml --out config.toml --values '<json>'
 *
 * <json> is an object of TOML tables: {"server": {"listen_addr": "127.0.0.1:8443"}, ...}. A null value
 * comments the key out (e.g. policy.database_url_env when the demo sets policy.database_url). A nested
 * object becomes an inline table unless the example already has a [table.sub] header for it.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { isMain } from './is-main.js';

type Json = string | number | boolean | null | Json[] | { [k: string]: Json };
type Table = { [k: string]: Json };

const HEADER = /^\s*\[([^[\]]+)\]\s*(#.*)?$/;
const BARE_KEY = /^[A-Za-z0-9_-]+$/;

function tomlKey(key: string): string {
  return BARE_KEY.test(key) ? key : JSON.stringify(key);
}

/** TOML for one value (JSON string escapes are valid TOML basic-string escapes). */
export function tomlValue(v: Json): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v === null) throw new Error('null has no TOML form');
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  const entries = Object.entries(v);
  return entries.length === 0
    ? '{}'
    : `{ ${entries.map(([k, x]) => `${tomlKey(k)} = ${tomlValue(x)}`).join(', ')} }`;
}

function headerName(line: string): string | undefined {
  const m = HEADER.exec(line);
  return m?.[1]
    ?.split('.')
    .map((p) => p.trim().replace(/^"(.*)"$/, '$1'))
    .join('.');
}

/** [start, end): the lines of table `name` after its header; undefined when there is no such header. */
function tableRange(lines: string[], name: string): [number, number] | undefined {
  const start = lines.findIndex((l) => headerName(l) === name);
  if (start < 0) return undefined;
  let end = start + 1;
  while (end < lines.length && headerName(lines[end] as string) === undefined) end++;
  // Keep trailing blank/comment lines (they usually introduce the next table) outside the range.
  while (end > start + 1 && /^\s*(#.*)?$/.test(lines[end - 1] as string)) end--;
  return [start + 1, end];
}

function keyLine(lines: string[], [from, to]: [number, number], key: string): number {
  const re = new RegExp(`^\\s*(${escapeRe(key)}|"${escapeRe(key)}")\\s*=`);
  for (let i = from; i < to; i++) if (re.test(lines[i] as string)) return i;
  return -1;
}

function commentedKeyLine(lines: string[], [from, to]: [number, number], key: string): number {
  const re = new RegExp(`^\\s*#\\s*(${escapeRe(key)}|"${escapeRe(key)}")\\s*=`);
  for (let i = from; i < to; i++) if (re.test(lines[i] as string)) return i;
  return -1;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Apply `values` to the example's text. */
export function applyValues(text: string, values: Table): string {
  const lines = text.replace(/\r\n/g, '\n').split('\n');
  for (const [table, body] of Object.entries(values)) {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw new Error(`--values: ${table} must be an object of keys`);
    }
    for (const [key, value] of Object.entries(body)) {
      const subName = `${table}.${key}`;
      const sub = tableRange(lines, subName);
      if (sub !== undefined && value !== null && typeof value === 'object' && !Array.isArray(value)) {
        // The example has a [table.key] section: replace its body.
        const body2 = Object.entries(value).map(([k, x]) => `${tomlKey(k)} = ${tomlValue(x)}`);
        lines.splice(sub[0], sub[1] - sub[0], ...body2);
        continue;
      }
      if (sub !== undefined) {
        // [table.key] exists but the new value is not a table: comment the section's entries out.
        for (let i = sub[0]; i < sub[1]; i++)
          if (!/^\s*(#.*)?$/.test(lines[i] as string)) lines[i] = `# ${lines[i]}`;
        const h = sub[0] - 1;
        lines[h] = `# ${lines[h]} (replaced by ${table}.${key} below)`;
      }
      let range = tableRange(lines, table);
      if (range === undefined) {
        if (value === null) continue;
        if (lines.length > 0 && lines[lines.length - 1] !== '') lines.push('');
        lines.push(`[${table}]`);
        range = [lines.length, lines.length];
      }
      const at = keyLine(lines, range, key);
      if (value === null) {
        if (at >= 0) lines[at] = `# ${lines[at]}`;
        continue;
      }
      const line = `${tomlKey(key)} = ${tomlValue(value)}`;
      const commented = at >= 0 ? -1 : commentedKeyLine(lines, range, key);
      if (commented >= 0) {
        // Next to the example's commented-out form of the key ("# workers = 4").
        lines.splice(commented + 1, 0, line);
      } else if (at >= 0) {
        // A multi-line array value continues until its closing bracket: drop the continuation lines.
        let end = at + 1;
        const first = lines[at] as string;
        if (/=\s*\[/.test(first) && !balanced(first)) {
          let acc = first;
          while (end < range[1] && !balanced(acc)) acc += `\n${lines[end++]}`;
        }
        lines.splice(at, end - at, line);
      } else {
        lines.splice(range[1], 0, line);
      }
    }
  }
  return lines.join('\n');
}

function balanced(text: string): boolean {
  const noStrings = text.replace(/"(?:[^"\\]|\\.)*"|'[^']*'/g, '').replace(/#.*$/gm, '');
  let depth = 0;
  for (const c of noStrings) {
    if (c === '[') depth++;
    else if (c === ']') depth--;
  }
  return depth <= 0;
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(normalize(a)) === JSON.stringify(normalize(b));
}

function normalize(v: unknown): unknown {
  if (typeof v === 'bigint') return Number(v);
  if (Array.isArray(v)) return v.map(normalize);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(
      Object.entries(v as Record<string, unknown>)
        .sort(([x], [y]) => x.localeCompare(y))
        .map(([k, x]) => [k, normalize(x)]),
    );
  }
  return v;
}

function merged(base: Record<string, unknown>, values: Table): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone(base);
  for (const [table, body] of Object.entries(values)) {
    if (out[table] === undefined) out[table] = {};
    const t = out[table] as Record<string, unknown>;
    for (const [k, v] of Object.entries(body as Table)) {
      if (v === null) delete t[k];
      else t[k] = v;
    }
  }
  return out;
}

/** The edited text when it parses to exactly example ⊕ values, else a plain serialization of that. */
export function renderConfig(exampleText: string, values: Table): string {
  const want = merged(parseToml(exampleText) as Record<string, unknown>, values);
  try {
    const text = applyValues(exampleText, values);
    if (deepEqual(parseToml(text), want)) return text.endsWith('\n') ? text : `${text}\n`;
  } catch {
    // fall through to the serialized form
  }
  return (
    '# Written by demo/demo.sh from config.example.toml (comments were lost: see config.example.toml).\n' +
    stringifyToml(want) +
    '\n'
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      example: { type: 'string' },
      out: { type: 'string' },
      values: { type: 'string' },
      header: { type: 'string' },
    },
    strict: true,
  });
  if (!values.example || !values.out || !values.values) {
    process.stderr.write('usage: write-config --example FILE --out FILE --values JSON [--header TEXT]\n');
    process.exit(2);
  }
  const example = readFileSync(values.example, 'utf8');
  const wanted = JSON.parse(values.values) as Table;
  let text = renderConfig(example, wanted);
  if (values.header) text = `${values.header.replace(/^/gm, '# ')}\n${text}`;
  const tmp = `${values.out}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600 });
  // Validate with the gateway's loader before the file takes the real name.
  const loader = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../gateway/config.js');
  try {
    const { loadConfig } = (await import(pathToFileURL(loader).href)) as {
      loadConfig: (p: string, env?: NodeJS.ProcessEnv) => unknown;
    };
    loadConfig(tmp, process.env);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'ERR_MODULE_NOT_FOUND') {
      rmSync(tmp, { force: true });
      const why = e.message.split(tmp).join(values.out);
      process.stderr.write(`write-config: the gateway would reject the generated config: ${why}\n`);
      process.exit(1);
    }
  }
  renameSync(tmp, values.out);
}

if (isMain(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`write-config: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
