/**
 * Who may use this sidecar's TPM identity. Anything that can open the proxy socket acts as the agent, so
 * the agent-facing side is closed to everyone else (docs/contract.md "Sidecar command line"):
 * - a Unix socket (`--listen unix:/path`) is created 0600 (0660 with `--socket-group`): the kernel checks
 *   the connecting process's uid/gid against the file, no credential needed;
 * - a TCP listener must be loopback unless `--allow-non-loopback`, and with `--proxy-token-file` every
 *   CONNECT must carry `Proxy-Authorization: Basic base64(any-user:token)`, else 407.
 * A TCP peer's uid is not checked: Node has no SO_PEERCRED for TCP, and mapping the peer port to a uid
 * through /proc/net/tcp is Linux-only, invisible under hidepid or another network namespace, and races with
 * port reuse; the token is the portable credential (sidecar/README.md "Who can use the sidecar").
 */
import { execFileSync } from 'node:child_process';
import { createHash, timingSafeEqual } from 'node:crypto';
import { chmodSync, chownSync, lstatSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { errorText } from '../core/error-text.js';

export type ListenAddress =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string; readonly gid: number | undefined };

export const PROXY_AUTH_REALM = 'agent_gateway_sidecar';
/** Shorter tokens are guessable by anyone on the machine who can try CONNECTs. */
export const MIN_PROXY_TOKEN_LENGTH = 16;
const MAX_PROXY_TOKEN_LENGTH = 1024;
// How long probing an existing socket file may take before it counts as live (a hung sidecar).
const STALE_PROBE_TIMEOUT_MS = 1_000;

/** A refusal naming the flag or file; options.ts turns it into a UsageError (exit 2). */
export class AgentAccessError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AgentAccessError';
  }
}

/** `unix:/abs/path` → a Unix socket; anything else is host:port, parsed by the caller. */
export function unixSocketPath(text: string): string | undefined {
  if (!text.startsWith('unix:')) return undefined;
  const p = text.slice('unix:'.length);
  if (!path.isAbsolute(p))
    throw new AgentAccessError(`--listen ${JSON.stringify(text)}: use unix:/absolute/path`);
  // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
  if (Buffer.byteLength(p) > 107)
    throw new AgentAccessError(`--listen ${text}: the path is longer than 107 bytes`);
  return p;
}

/** `--socket-group` as a gid: a number, or a group name resolved through NSS (getent). */
export function resolveGroup(name: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  let line = '';
  try {
    line = execFileSync('getent', ['group', name], { encoding: 'utf8', timeout: 5_000 });
  } catch {
    throw new AgentAccessError(`--socket-group ${JSON.stringify(name)}: no such group`);
  }
  const gid = Number(line.split(':')[2]);
  if (!Number.isInteger(gid)) throw new AgentAccessError(`--socket-group ${name}: getent printed no gid`);
  return gid;
}

/**
 * The token in `--proxy-token-file`. The file must be private to its owner: a token others can read (or
 * have chosen, by writing the file) is no credential.
 */
export function readProxyToken(file: string): string {
  let mode: number;
  let text: string;
  try {
    mode = statSync(file).mode & 0o777;
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new AgentAccessError(`--proxy-token-file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  if ((mode & 0o077) !== 0) {
    throw new AgentAccessError(
      `--proxy-token-file ${file} has mode 0${mode.toString(8)}: group and others must have no access ` +
        `(chmod 600 ${file})`,
    );
  }
  // `openssl rand -hex 32 > file` ends the file with a newline; nothing else may be whitespace.
  const token = text.replace(/\r?\n$/, '');
  if (token.length < MIN_PROXY_TOKEN_LENGTH || token.length > MAX_PROXY_TOKEN_LENGTH) {
    throw new AgentAccessError(
      `--proxy-token-file ${file}: the token must be ${MIN_PROXY_TOKEN_LENGTH}..${MAX_PROXY_TOKEN_LENGTH} ` +
        `characters, got ${token.length}`,
    );
  }
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new AgentAccessError(
      `--proxy-token-file ${file}: the token must be printable ASCII without spaces (e.g. openssl rand -hex 32)`,
    );
  }
  return token;
}

/**
 * Whether a `Proxy-Authorization` header carries the token: scheme Basic, any user name, the password
 * compared in constant time (hashed first, so neither length nor content leaks through timing).
 */
export function proxyAuthorizationValid(header: string | undefined, token: string): boolean {
  const m = /^basic[ \t]+([A-Za-z0-9+/]+=*)[ \t]*$/i.exec(header ?? '');
  if (m === null) return false;
  const decoded = Buffer.from(m[1] as string, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return false;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(decoded.slice(colon + 1)), digest(token));
}

/**
 * Make `socketPath` free for a new listener: nothing there, or a socket nobody answers on (a sidecar that
 * died without removing it). A live socket or any other kind of file is an error naming the path.
 */
export async function clearStaleSocket(socketPath: string): Promise<void> {
  const parent = statSync(path.dirname(socketPath), { throwIfNoEntry: false });
  if (parent === undefined)
    throw new AgentAccessError(`--listen unix:${socketPath}: the directory does not exist`);
  // Whoever may write the directory could replace the socket with their own and receive the agent's traffic.
  if ((parent.mode & 0o022) !== 0 && (parent.mode & 0o1000) === 0) {
    throw new AgentAccessError(
      `--listen unix:${socketPath}: ${path.dirname(socketPath)} is writable by others without the sticky bit`,
    );
  }
  const st = lstatSync(socketPath, { throwIfNoEntry: false });
  if (st === undefined) return;
  if (!st.isSocket()) {
    throw new AgentAccessError(`--listen unix:${socketPath}: the path exists and is not a socket`);
  }
  if (await socketAnswers(socketPath)) {
    throw new AgentAccessError(
      `--listen unix:${socketPath}: another process is listening on this socket (is a sidecar running?)`,
    );
  }
  unlinkSync(socketPath);
}

function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect({ path: socketPath });
    const done = (live: boolean) => {
      clearTimeout(timer);
      probe.destroy();
      resolve(live);
    };
    const timer = setTimeout(() => done(true), STALE_PROBE_TIMEOUT_MS);
    probe.once('connect', () => done(true));
    // ECONNREFUSED: nobody listens. Any other error (EACCES: someone else's socket) is not ours to delete.
    probe.once('error', (err: NodeJS.ErrnoException) =>
      done(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT'),
    );
  });
}

/**
 * Bind `server` to `socketPath` with mode 0600 from the first instant. The umask is process-wide, so it is
 * narrowed only around listen(): Node binds a pipe synchronously inside listen() (checked below, fail
 * closed if a Node version ever did not), and bind() creates the file with 0777 & ~umask. With a group,
 * chown happens while the file is still 0600 and only then is the group given access.
 */
export function listenUnix(server: net.Server, socketPath: string, gid: number | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      server.close();
      reject(err);
    };
    server.once('error', reject);
    const previous = process.umask(0o177);
    try {
      server.listen({ path: socketPath, exclusive: true }, () => {
        server.off('error', reject);
        try {
          if (gid !== undefined) {
            chownSync(socketPath, -1, gid);
            chmodSync(socketPath, 0o660);
          }
        } catch (err) {
          fail(
            new AgentAccessError(
              `--socket-group: cannot give ${socketPath} to gid ${gid}: ${errorText(err)}`,
            ),
          );
          return;
        }
        resolve();
      });
    } finally {
      process.umask(previous);
    }
    const st = lstatSync(socketPath, { throwIfNoEntry: false });
    if (st !== undefined && (st.mode & 0o777) !== 0o600) {
      fail(
        new AgentAccessError(
          `${socketPath} was created with mode 0${(st.mode & 0o777).toString(8)}, not 0600`,
        ),
      );
    }
  });
}
