// The demo's Node helpers: the mock services' routing, the config.toml writer, and the port and process
// helpers of dev-support/ that demo/lib.sh (through dev-support/cli.ts) and the demo's e2e test rely on.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { parse } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { route } from '../../demo/mock-service.js';
import { applyValues, renderConfig, tomlValue } from '../../demo/write-config.js';
import { isPortFree, quietFreePort } from '../../dev-support/ports.js';
import {
  listeningPorts,
  processAlive,
  processesMentioning,
  processStartTime,
} from '../../dev-support/proc.js';

describe('mock-service route', () => {
  it('answers /health for any service', () => {
    expect(route('docstore', 'GET', '/health')).toEqual({
      status: 200,
      body: { status: 'ok', service: 'docstore' },
    });
    expect(route('messaging', 'GET', '/health?x=1')).toMatchObject({
      status: 200,
      body: { service: 'messaging' },
    });
  });

  it('lists two items on each service own path, 404 JSON elsewhere', () => {
    const docs = route('docstore', 'GET', '/documents');
    expect(docs.status).toBe(200);
    expect((docs.body as { documents: unknown[] }).documents).toHaveLength(2);
    const msgs = route('messaging', 'GET', '/messages/');
    expect((msgs.body as { messages: unknown[] }).messages).toHaveLength(2);
    expect(route('docstore', 'GET', '/messages')).toMatchObject({
      status: 404,
      body: { error: 'not found' },
    });
    expect(route('messaging', 'GET', '/')).toMatchObject({ status: 404 });
    expect(route('docstore', 'POST', '/documents')).toMatchObject({ status: 405 });
  });
});

describe('write-config', () => {
  const example = [
    '# example',
    '[server]',
    'listen_addr = "127.0.0.1:8443"  # where agents connect',
    'tls_cert_path = "certs/server.pem"',
    'tls_key_path = "certs/server-key.pem"',
    '',
    '[policy]',
    'database_url_env = "AGENT_GATEWAY_DATABASE_URL"',
    '',
    '[upstream]',
    'deny_cidrs = [',
    '  "169.254.0.0/16",',
    ']',
    '',
    '# dial targets',
    '[upstream.overrides]',
    '# "a:443" = "10.0.0.1:443"',
    '',
  ].join('\n');

  it('keeps the example text and replaces, adds and comments out keys', () => {
    const values = {
      server: { listen_addr: '127.0.0.1:18443' },
      policy: { database_url: 'postgresql://x@127.0.0.1:5/db', database_url_env: null },
      upstream: { deny_cidrs: ['0.0.0.0/8'], overrides: { 'docstore:443': '127.0.0.1:9441' } },
      admin: { listen_addr: '127.0.0.1:19090' },
    };
    const text = applyValues(example, values);
    expect(text).toContain('# example');
    expect(text).toContain('listen_addr = "127.0.0.1:18443"');
    expect(text).toContain('# database_url_env = "AGENT_GATEWAY_DATABASE_URL"');
    expect(text).toContain('# dial targets\n[upstream.overrides]\n"docstore:443" = "127.0.0.1:9441"');
    const parsed = parse(text) as Record<string, Record<string, unknown>>;
    expect(parsed['server']?.['tls_cert_path']).toBe('certs/server.pem');
    expect(parsed['policy']).toEqual({ database_url: 'postgresql://x@127.0.0.1:5/db' });
    expect(parsed['upstream']?.['deny_cidrs']).toEqual(['0.0.0.0/8']);
    expect(parsed['upstream']?.['overrides']).toEqual({ 'docstore:443': '127.0.0.1:9441' });
    expect(parsed['admin']).toEqual({ listen_addr: '127.0.0.1:19090' });
  });

  it('puts a table value inline when the example has no [table.key] section', () => {
    const text = renderConfig('[upstream]\nconnect_timeout_ms = 5\n', {
      upstream: { overrides: { 'messaging:443': '127.0.0.1:9442' } },
    });
    expect(text).toContain('overrides = { "messaging:443" = "127.0.0.1:9442" }');
    expect(parse(text)).toEqual({
      upstream: { connect_timeout_ms: 5, overrides: { 'messaging:443': '127.0.0.1:9442' } },
    });
  });

  it('encodes TOML values', () => {
    expect(tomlValue('a"b\\c')).toBe('"a\\"b\\\\c"');
    expect(tomlValue([1, 'x'])).toBe('[1, "x"]');
    expect(tomlValue({ 'a.b': true })).toBe('{ "a.b" = true }');
  });
});

describe('quietFreePort', () => {
  it('hands out distinct free ports below the ephemeral range, pairs as P and P+1', async () => {
    const taken = new Set<number>();
    const singles: number[] = [];
    for (let i = 0; i < 10; i++) singles.push(await quietFreePort({ taken }));
    const pair = await quietFreePort({ pair: true, taken });
    expect(new Set([...singles, pair, pair + 1]).size).toBe(12);
    for (const p of [...singles, pair, pair + 1]) {
      expect(p).toBeGreaterThanOrEqual(20_000);
      expect(p).toBeLessThanOrEqual(32_767);
      expect(taken.has(p)).toBe(true);
      expect(await isPortFree(p)).toBe(true);
    }
  });
});

describe('proc', () => {
  it('tells a live process by its start time and forgets it once it has exited', async () => {
    expect(processStartTime(process.pid)).toMatch(/^\d+$/);
    const marker = `agw-proc-test-${randomBytes(6).toString('hex')}`;
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)', marker], {
      stdio: 'ignore',
    });
    await once(child, 'spawn');
    const pid = child.pid as number;
    expect(processAlive(pid)).toBe(true);
    expect(processesMentioning(marker)).toEqual([expect.stringMatching(new RegExp(`^${pid}: .*${marker}`))]);
    child.kill('SIGKILL');
    await once(child, 'exit');
    expect(processAlive(pid)).toBe(false);
    expect(processStartTime(pid)).toBeUndefined();
    expect(processesMentioning(marker)).toEqual([]);
  });

  it('lists a listening port until its server closes', async () => {
    const port = await quietFreePort();
    const server = net.createServer().listen(port, '127.0.0.1');
    await once(server, 'listening');
    expect(listeningPorts().has(port)).toBe(true);
    server.close();
    await once(server, 'close');
    expect(listeningPorts().has(port)).toBe(false);
  });
});
