// The sidecar serves only its agent (issue 13 item 9), tried as another local user or process would:
// the real sidecar process with its key in a real swtpm, the real gateway and PostgreSQL registry with a
// signed grant, an HTTPS destination, curl and raw sockets as the agent, and `runuser -u nobody` as the
// other user. Needs `npm run build` and root (to act as `nobody`).
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createPrincipalKey } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { runCommand } from '../../dev-support/run-command.js';
import { GATEWAY_MAIN, type GatewayProcess, makeTempDir, startGatewayProcess } from '../support/gateway.js';
import type { ManagedProcess } from '../support/processes.js';
import {
  curl,
  type Destination,
  rawConnect,
  SIDECAR_MAIN,
  type SidecarKey,
  startHttpsDestination,
  startSidecarTpm,
  waitFor,
} from '../support/sidecar.js';

const IDENTITY = 'agent-sidecar-access-e2e';
const NOBODY = 65534;

/** The exit of a process that should stop by itself; a process still running after `ms` is killed. */
async function exitWithin(proc: ManagedProcess, ms = 30_000): Promise<number | null> {
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), ms);
  const info = await proc.exited;
  clearTimeout(timer);
  return info.signal === null ? info.code : null;
}

/** CONNECT over a Unix socket, then HTTPS inside the tunnel: the agent's whole path, without curl. */
function helloOverUnixSocket(socketPath: string, destPort: number, caPem: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: socketPath });
    socket.setTimeout(30_000, () => socket.destroy(new Error('no answer over the unix socket')));
    socket.once('error', reject);
    socket.write(`CONNECT localhost:${destPort} HTTP/1.1\r\nHost: localhost:${destPort}\r\n\r\n`);
    socket.once('data', (d: Buffer) => {
      const head = d.toString('latin1');
      if (!head.startsWith('HTTP/1.1 200 ')) {
        reject(new Error(`CONNECT over the unix socket answered ${head.split('\r\n')[0]}`));
        return;
      }
      const inner = tls.connect({ socket, servername: 'localhost', ca: caPem }, () => {
        inner.write(`GET /hello HTTP/1.1\r\nHost: localhost:${destPort}\r\nConnection: close\r\n\r\n`);
      });
      let text = '';
      inner.on('data', (c: Buffer) => {
        text += c.toString();
      });
      inner.once('end', () => resolve(text.slice(text.indexOf('\r\n\r\n') + 4)));
      inner.once('error', reject);
    });
  });
}

/** What a process of user `nobody` gets when it connects to the socket: "connected" or the errno code. */
async function connectAsNobody(socketPath: string): Promise<string> {
  const script =
    `const s = require('net').connect({ path: ${JSON.stringify(socketPath)} });` +
    `s.on('connect', () => { console.log('connected'); s.destroy(); });` +
    `s.on('error', (e) => console.log(e.code));`;
  const r = await runCommand('runuser', ['-u', 'nobody', '--', process.execPath, '-e', script], {
    timeoutMs: 20_000,
  });
  return r.stdout.trim() || r.stderr.trim();
}

describe.sequential('the sidecar serves only its agent', () => {
  const adminUrl = inject('pgAdminUrl');
  let dir: string;
  let sockDir: string;
  let key: SidecarKey;
  let dbUrl: string;
  let gw: GatewayProcess;
  let destination: Destination;
  let gatewayCa: string;
  const running: ManagedProcess[] = [];
  let tokenSidecar: { proc: ManagedProcess; port: number; token: string } | undefined;

  const args = (overrides: Record<string, string>) =>
    key.runArgs({ port: gw.port, caPath: gatewayCa }, overrides);

  async function startSidecar(overrides: Record<string, string>): Promise<ManagedProcess> {
    const proc = key.spawn(args(overrides));
    running.push(proc);
    await proc.waitForLog((l) => l.json?.['msg'] === 'sidecar listening', 60_000);
    return proc;
  }

  /** Gateway log lines about any CONNECT so far. */
  const gatewayConnects = () => gw.proc.lines.filter((l) => l.json?.['dest_authority'] !== undefined).length;

  beforeAll(async () => {
    for (const f of [SIDECAR_MAIN, GATEWAY_MAIN]) {
      if (!existsSync(f)) throw new Error(`${f} missing: run \`npm run build\` first`);
    }
    if (process.getuid?.() !== 0) throw new Error('these tests act as user nobody: run them as root');
    dir = await makeTempDir('agw-sidecar-access-');
    // nobody may walk to the socket, so a refusal below is the socket's own mode, not a directory's.
    await chmod(dir, 0o755);
    sockDir = path.join(dir, 'run');
    await mkdir(sockDir, { mode: 0o755 });
    await chmod(sockDir, 0o755);
    [key, destination] = await Promise.all([startSidecarTpm(dir, IDENTITY), startHttpsDestination(dir)]);
    const made = await key.provision();
    expect(made.code, made.stderr + made.stdout).toBe(0);

    dbUrl = await createMigratedDatabase(adminUrl, 'sidecar_access_e2e');
    await grant(dbUrl, {
      principalId: 'org-sidecar-access',
      principal: createPrincipalKey(),
      identity: IDENTITY,
      subjectSpkiDer: await readFile(key.spkiPath),
      destination: `localhost:${destination.port}`,
    });
    gw = await startGatewayProcess({ databaseUrl: dbUrl, config: { observability: { log_level: 'info' } } });
    gatewayCa = path.join(dir, 'gateway-ca.pem');
    await writeFile(gatewayCa, gw.caPem);
  }, 240_000);

  afterAll(async () => {
    for (const p of running) await p.stop('SIGKILL');
    await gw?.cleanup();
    await destination?.close();
    await key?.tpm.stop();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl).catch(() => {});
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('refuses a non-loopback --listen without --allow-non-loopback (exit 2, naming the flag)', async () => {
    const port = await freePort();
    const proc = key.spawn(args({ '--listen': `0.0.0.0:${port}` }));
    running.push(proc);
    expect(await exitWithin(proc)).toBe(2);
    expect(proc.tail()).toContain(`--listen 0.0.0.0:${port} is not a loopback address`);
    expect(proc.tail()).toContain('--allow-non-loopback');
  });

  it('refuses a proxy token file that group or others can read, naming the file and its mode', async () => {
    const tokenFile = path.join(dir, 'token-0644');
    await writeFile(tokenFile, randomBytes(32).toString('hex'), { mode: 0o644 });
    await chmod(tokenFile, 0o644);
    const proc = key.spawn(
      args({ '--listen': `127.0.0.1:${await freePort()}`, '--proxy-token-file': tokenFile }),
    );
    running.push(proc);
    expect(await exitWithin(proc)).toBe(2);
    expect(proc.tail()).toContain(`--proxy-token-file ${tokenFile} has mode 0644`);
  });

  it('on TCP with a proxy token: no or a wrong credential → 407 and nothing reaches the gateway', async () => {
    const token = randomBytes(32).toString('hex');
    const tokenFile = path.join(dir, 'proxy.token');
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    const port = await freePort();
    const proc = await startSidecar({ '--listen': `127.0.0.1:${port}`, '--proxy-token-file': tokenFile });
    tokenSidecar = { proc, port, token };
    const target = `localhost:${destination.port}`;
    const before = gatewayConnects();

    const bare = await rawConnect(port, target);
    expect(bare.status).toBe(407);
    expect(bare.headers).toContain('Proxy-Authenticate: Basic realm="agent_gateway_sidecar"');
    const wrong = await rawConnect(port, target, {
      'Proxy-Authorization': `Basic ${Buffer.from(`agent:${token.slice(0, -1)}x`).toString('base64')}`,
    });
    expect(wrong.status).toBe(407);
    const viaCurl = await curl([
      '-x',
      `http://agent:not-the-token@127.0.0.1:${port}`,
      '-o',
      '/dev/null',
      '-w',
      '%{http_connect}',
      '--cacert',
      destination.caPath,
      `https://${target}/hello`,
    ]);
    expect(viaCurl.stdout).toBe('407');
    // Another local user without the credential: on loopback TCP the kernel lets anyone connect.
    const asNobody = await runCommand(
      'runuser',
      [
        '-u',
        'nobody',
        '--',
        'curl',
        '-sS',
        '--max-time',
        '20',
        '-x',
        `http://127.0.0.1:${port}`,
        '-o',
        '/dev/null',
        '-w',
        '%{http_connect}',
        '--cacert',
        destination.caPath,
        `https://${target}/hello`,
      ],
      { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, timeoutMs: 30_000 },
    );
    expect(asNobody.stdout).toBe('407');
    // The gateway writes its log up to 100 ms late: give it longer than that before counting.
    await new Promise((r) => setTimeout(r, 500));
    expect(gatewayConnects()).toBe(before);
    expect(proc.lines.some((l) => l.json?.['msg'] === 'gateway connection established')).toBe(false);
    expect(
      proc.lines.filter((l) => l.json?.['msg'] === 'refused CONNECT without the proxy credential'),
    ).toHaveLength(4);
  });

  it('on TCP with the right token (curl: credentials in the proxy URL) the tunnel works end to end', async () => {
    if (tokenSidecar === undefined) throw new Error('needs the token sidecar of the test before');
    const { proc, port, token } = tokenSidecar;
    const r = await curl([
      '-x',
      `http://agent:${token}@127.0.0.1:${port}`,
      '--cacert',
      destination.caPath,
      `https://localhost:${destination.port}/hello`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('hello through the TPM-authenticated tunnel\n');
    const allowed = (await gw.waitForLogs('CONNECT allowed')).at(-1);
    expect(allowed?.['source_identity']).toBe(IDENTITY);
    // The credential never reaches a log line.
    expect(proc.lines.some((l) => l.text.includes(token))).toBe(false);
    expect(gw.proc.lines.some((l) => l.text.includes(token))).toBe(false);
  });

  it('on a unix socket (0600) serves its own user and refuses user nobody with EACCES', async () => {
    const socketPath = path.join(sockDir, 'proxy.sock');
    const proc = await startSidecar({ '--listen': `unix:${socketPath}` });
    const st = await lstat(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(0);
    const listening = proc.lines.find((l) => l.json?.['msg'] === 'sidecar listening')?.json;
    expect(listening?.['listen']).toBe(`unix:${socketPath}`);

    // nobody can see the socket (the directories are open) but not connect to it.
    const seen = await runCommand('runuser', ['-u', 'nobody', '--', 'stat', '-c', '%a %U', socketPath]);
    expect(seen.stdout.trim()).toBe('600 root');
    const allowedBefore = gw.logs('CONNECT allowed').length;
    expect(await connectAsNobody(socketPath)).toBe('EACCES');
    // Its own user reaches the destination through the sidecar and the gateway.
    expect(
      await helloOverUnixSocket(socketPath, destination.port, await readFile(destination.caPath, 'utf8')),
    ).toBe('hello through the TPM-authenticated tunnel\n');
    await waitFor(
      'the gateway allowing the CONNECT',
      () => gw.logs('CONNECT allowed').length > allowedBefore,
    );

    expect(await proc.stop('SIGTERM')).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
  });

  it('--socket-group opens the socket to that group; a live socket is refused, a stale one replaced', async () => {
    const socketPath = path.join(sockDir, 'group.sock');
    const first = await startSidecar({ '--listen': `unix:${socketPath}`, '--socket-group': 'nogroup' });
    const st = await lstat(socketPath);
    expect(st.mode & 0o777).toBe(0o660);
    expect(st.gid).toBe(NOBODY);
    expect(await connectAsNobody(socketPath)).toBe('connected');

    // Another sidecar on the same path while the first answers: refused, naming the path.
    const second = key.spawn(args({ '--listen': `unix:${socketPath}` }));
    running.push(second);
    expect(await exitWithin(second, 60_000)).toBe(3);
    expect(second.tail()).toContain(`--listen unix:${socketPath}: another process is listening`);

    // Killed without cleaning up, the first leaves its socket file; the next sidecar replaces it.
    await first.stop('SIGKILL');
    expect((await lstat(socketPath)).isSocket()).toBe(true);
    const third = await startSidecar({ '--listen': `unix:${socketPath}` });
    expect((await lstat(socketPath)).mode & 0o777).toBe(0o600);
    expect(await connectAsNobody(socketPath)).toBe('EACCES');
    expect(await third.stop('SIGTERM')).toBe(0);
  });
});
