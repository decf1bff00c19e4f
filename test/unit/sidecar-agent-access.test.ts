// Who may use the sidecar (sidecar/agent-access.ts): the Proxy-Authorization check, and the Unix socket's
// mode from the first instant, its group, and stale versus live socket files. Real sockets and files.
import { spawn } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearStaleSocket, listenUnix, proxyAuthorizationValid } from '../../sidecar/agent-access.js';

const TOKEN = 'k3y-0123456789abcdef';
const basic = (s: string) => `Basic ${Buffer.from(s).toString('base64')}`;

describe('Proxy-Authorization', () => {
  it('accepts Basic with any user name and the token as password', () => {
    expect(proxyAuthorizationValid(basic(`agent:${TOKEN}`), TOKEN)).toBe(true);
    expect(proxyAuthorizationValid(basic(`:${TOKEN}`), TOKEN)).toBe(true);
    expect(proxyAuthorizationValid(`bAsIc  ${Buffer.from(`x:${TOKEN}`).toString('base64')}`, TOKEN)).toBe(
      true,
    );
  });

  it('refuses a missing, wrong, truncated or non-Basic credential', () => {
    for (const header of [
      undefined,
      '',
      basic(`agent:${TOKEN}x`),
      basic(`agent:${TOKEN.slice(0, -1)}`),
      basic(TOKEN),
      basic(`${TOKEN}:agent`),
      `Bearer ${TOKEN}`,
      `Basic ${TOKEN}`,
      `Basic ${Buffer.from(`a:${TOKEN}`).toString('base64')} extra`,
    ]) {
      expect(proxyAuthorizationValid(header, TOKEN), String(header)).toBe(false);
    }
  });
});

describe('Unix socket listener', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'agw-agent-access-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const close = (server: net.Server) => new Promise<void>((r) => server.close(() => r()));

  it('creates the socket 0600 and leaves the process umask as it was', async () => {
    const sock = path.join(dir, 'a.sock');
    const umask = process.umask();
    const server = net.createServer();
    await listenUnix(server, sock, undefined);
    expect((await lstat(sock)).mode & 0o777).toBe(0o600);
    expect(process.umask()).toBe(umask);
    await close(server);
  });

  it('gives the socket to --socket-group as 0660', async () => {
    const sock = path.join(dir, 'g.sock');
    const server = net.createServer();
    await listenUnix(server, sock, 65534);
    const st = await lstat(sock);
    expect(st.mode & 0o777).toBe(0o660);
    expect(st.gid).toBe(65534);
    await close(server);
  });

  it('replaces a stale socket, refuses a live one and a non-socket, naming the path', async () => {
    const sock = path.join(dir, 's.sock');
    const live = net.createServer();
    await listenUnix(live, sock, undefined);
    await expect(clearStaleSocket(sock)).rejects.toThrow(
      `--listen unix:${sock}: another process is listening`,
    );
    await close(live);

    // A sidecar killed with SIGKILL leaves its socket file behind, with nobody accepting on it.
    const stale = path.join(dir, 'stale.sock');
    const child = spawn(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.stdout.write('up'))`,
    ]);
    await new Promise((resolve) => child.stdout.once('data', resolve));
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    expect((await lstat(stale)).isSocket()).toBe(true);
    await clearStaleSocket(stale);
    const again = net.createServer();
    await listenUnix(again, stale, undefined);
    await close(again);

    const file = path.join(dir, 'plain');
    await writeFile(file, 'x');
    await expect(clearStaleSocket(file)).rejects.toThrow(
      `--listen unix:${file}: the path exists and is not a socket`,
    );
  });

  it('refuses a directory others can write without the sticky bit', async () => {
    const open = path.join(dir, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    await expect(clearStaleSocket(path.join(open, 'p.sock'))).rejects.toThrow(
      /writable by others without the sticky bit/,
    );
    await chmod(open, 0o1777);
    await expect(clearStaleSocket(path.join(open, 'p.sock'))).resolves.toBeUndefined();
  });
});
