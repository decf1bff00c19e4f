/**
 * The one load client every bench line uses: a separate Node process, forked by run.ts and driven over
 * IPC (protocol.ts). It speaks TLS 1.3 end to end to the sink; on proxied lines that TLS runs inside an
 * HTTP/2 CONNECT stream (mTLS to the proxy) or an HTTP/1.1 CONNECT tunnel (the sidecar).
 */
import { createHash, randomFillSync } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type {
  ClientSetup,
  Direction,
  LatencySummary,
  Op,
  OpResult,
  Request,
  Response,
  Target,
} from './protocol.js';

const CHUNK = 1024 * 1024;
const payload = randomFillSync(Buffer.allocUnsafe(CHUNK));
let setup: ClientSetup | undefined;

function cfg(): ClientSetup {
  if (setup === undefined) throw new Error('load client: setup first');
  return setup;
}

/** Reject after ms; every wait in this file goes through it, so no operation can hang the run. */
function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

const nowUs = () => Number(process.hrtime.bigint() / 1000n);

// ---------- HTTP/2 sessions (kept warm per line) ----------

/** One entry per connection index; the promise is shared, so concurrent opens never race to connect. */
type PoolEntry = { readonly ready: Promise<http2.ClientHttp2Session>; session?: http2.ClientHttp2Session };
const pools = new Map<string, (PoolEntry | undefined)[]>();

function h2Connect(
  t: Extract<Target, { kind: 'h2' }>,
  onSecure?: () => void,
): Promise<http2.ClientHttp2Session> {
  const c = cfg();
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://localhost:${t.port}`, {
      createConnection: () => {
        const socket = tls.connect({
          host: '127.0.0.1',
          port: t.port,
          servername: 'localhost',
          ca: c.caPem,
          cert: t.certPem,
          key: t.keyPem,
          ALPNProtocols: ['h2'],
          minVersion: 'TLSv1.3',
        });
        socket.setNoDelay(true);
        if (onSecure !== undefined) socket.once('secureConnect', onSecure);
        return socket;
      },
      settings: { initialWindowSize: c.streamWindowBytes, enablePush: false },
      maxSessionMemory: 256,
    });
    const fail = (err: Error) => reject(err);
    session.once('error', fail);
    session.once('connect', () => {
      session.removeListener('error', fail);
      session.on('error', () => {});
      session.setLocalWindowSize(c.connectionWindowBytes);
      resolve(session);
    });
  });
}

async function sessionFor(
  line: string,
  t: Extract<Target, { kind: 'h2' }>,
  index: number,
): Promise<http2.ClientHttp2Session> {
  let pool = pools.get(line);
  if (pool === undefined) {
    pool = [];
    pools.set(line, pool);
  }
  const existing = pool[index];
  if (existing !== undefined) {
    const s = existing.session;
    if (s === undefined || (!s.closed && !s.destroyed)) return existing.ready;
  }
  const entry: PoolEntry = { ready: within(cfg().opTimeoutMs, 'h2 connect', h2Connect(t)) };
  pool[index] = entry;
  try {
    entry.session = await entry.ready;
  } catch (err) {
    if (pool[index] === entry) pool[index] = undefined;
    throw err;
  }
  return entry.session;
}

function closeSession(s: http2.ClientHttp2Session): Promise<void> {
  if (s.closed || s.destroyed) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      s.destroy();
      resolve();
    }, 10_000);
    s.close(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function closeEntries(entries: (PoolEntry | undefined)[]): Promise<void> {
  await Promise.all(
    entries.map(async (e) => {
      const s = await e?.ready.catch(() => undefined);
      if (s !== undefined) await closeSession(s);
    }),
  );
}

async function closePool(line: string): Promise<void> {
  const pool = pools.get(line) ?? [];
  pools.delete(line);
  await closeEntries(pool);
}

function h2Connect200(
  session: http2.ClientHttp2Session,
  authority: string,
): Promise<http2.ClientHttp2Stream> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    const fail = (err: Error) => reject(err);
    stream.once('error', fail);
    stream.once('close', () =>
      reject(new Error(`CONNECT stream closed before a response (rst ${stream.rstCode})`)),
    );
    stream.once('response', (headers) => {
      const status = headers[':status'];
      if (status !== 200) {
        stream.close();
        reject(new Error(`CONNECT answered ${status}`));
        return;
      }
      stream.removeListener('error', fail);
      stream.on('error', () => {});
      resolve(stream);
    });
  });
}

// ---------- HTTP/1.1 CONNECT (sidecar) ----------

function http1Connect(t: Extract<Target, { kind: 'http1' }>): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: t.port });
    socket.setNoDelay(true);
    let head = Buffer.alloc(0);
    const fail = (err: Error) => {
      socket.destroy();
      reject(err);
    };
    socket.once('error', fail);
    socket.once('connect', () =>
      socket.write(`CONNECT ${t.authority} HTTP/1.1\r\nHost: ${t.authority}\r\n\r\n`),
    );
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) {
        if (head.length > 16_384) fail(new Error('CONNECT response head too large'));
        return;
      }
      socket.removeListener('data', onData);
      socket.pause();
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(head.toString('latin1', 0, end))?.[1];
      if (status !== '200') {
        fail(
          new Error(
            `CONNECT answered ${status ?? 'garbage'}: ${head.toString('latin1', 0, Math.min(end, 200))}`,
          ),
        );
        return;
      }
      const rest = head.subarray(end + 4);
      if (rest.length > 0) socket.unshift(rest);
      socket.removeListener('error', fail);
      socket.on('error', () => {});
      resolve(socket);
    };
    socket.on('data', onData);
  });
}

// ---------- tunnels ----------

type Tunnel = { tls: tls.TLSSocket; raw: Duplex | undefined };

/** Open the tunnel (not yet TLS): the raw CONNECT stream or socket; undefined for direct. */
async function openRaw(line: string, t: Target, connection: number): Promise<Duplex | undefined> {
  if (t.kind === 'direct') return undefined;
  if (t.kind === 'http1') return http1Connect(t);
  return h2Connect200(await sessionFor(line, t, connection), t.authority);
}

function innerTls(t: Target, raw: Duplex | undefined): Promise<tls.TLSSocket> {
  const c = cfg();
  return new Promise((resolve, reject) => {
    const common = { servername: c.sinkName, ca: c.caPem, minVersion: 'TLSv1.3' as const };
    const socket =
      raw === undefined
        ? tls.connect({ ...common, host: '127.0.0.1', port: t.port })
        : tls.connect({ ...common, socket: raw });
    if (raw === undefined) socket.setNoDelay(true);
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      socket.removeListener('error', reject);
      socket.on('error', () => {});
      resolve(socket);
    });
  });
}

async function openTunnel(line: string, t: Target, connection: number): Promise<Tunnel> {
  const raw = await openRaw(line, t, connection);
  try {
    return { tls: await innerTls(t, raw), raw };
  } catch (err) {
    raw?.destroy();
    throw err;
  }
}

/** End the TLS session and wait until the tunnel is fully closed (bounded). */
function closeTunnel(tun: Tunnel): Promise<void> {
  return new Promise((resolve) => {
    const s = tun.tls;
    const timer = setTimeout(() => {
      s.destroy();
      tun.raw?.destroy();
      resolve();
    }, 10_000);
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    if (s.destroyed) {
      done();
      return;
    }
    s.once('close', done);
    s.resume();
    s.end();
  });
}

// ---------- transfers ----------

/** Read one `\n`-terminated line; returns it and any bytes after it. */
function readLine(s: tls.TLSSocket): Promise<{ line: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let acc = '';
    const onData = (chunk: Buffer) => {
      const nl = chunk.indexOf(10);
      if (nl === -1) {
        acc += chunk.toString('latin1');
        if (acc.length > 256) reject(new Error('sink line too long'));
        return;
      }
      s.removeListener('data', onData);
      s.removeListener('close', onClose);
      s.pause();
      resolve({ line: acc + chunk.toString('latin1', 0, nl), rest: chunk.subarray(nl + 1) });
    };
    const onClose = () =>
      reject(new Error(`tunnel closed before the sink answered (got ${JSON.stringify(acc)})`));
    s.on('data', onData);
    s.once('close', onClose);
    s.resume();
  });
}

/** Send n bytes, honouring backpressure. */
function writeAll(s: tls.TLSSocket, n: number, hash?: ReturnType<typeof createHash>): Promise<void> {
  return new Promise((resolve, reject) => {
    let left = n;
    const onClose = () => reject(new Error(`tunnel closed with ${left} bytes unsent`));
    s.once('close', onClose);
    const pump = () => {
      while (left > 0) {
        const len = Math.min(left, CHUNK);
        const chunk = len === CHUNK ? payload : payload.subarray(0, len);
        left -= len;
        hash?.update(chunk);
        if (!s.write(chunk)) {
          if (left === 0) break;
          s.once('drain', pump);
          return;
        }
      }
      s.removeListener('close', onClose);
      resolve();
    };
    pump();
  });
}

/** Receive exactly n bytes (after `first`). */
function readN(
  s: tls.TLSSocket,
  n: number,
  first: Buffer,
  hash?: ReturnType<typeof createHash>,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = 0;
    const take = (chunk: Buffer) => {
      const use = chunk.length > n - got ? chunk.subarray(0, n - got) : chunk;
      got += use.length;
      hash?.update(use);
      if (got >= n) {
        s.removeListener('data', take);
        s.removeListener('close', onClose);
        resolve();
      }
    };
    const onClose = () => reject(new Error(`tunnel closed after ${got} of ${n} bytes`));
    s.once('close', onClose);
    if (n === 0) {
      resolve();
      return;
    }
    if (first.length > 0) take(first);
    if (got < n) {
      s.on('data', take);
      s.resume();
    }
  });
}

async function upload(s: tls.TLSSocket, n: number): Promise<void> {
  s.write(`U ${n}\n`);
  const ack = readLine(s);
  await writeAll(s, n);
  const { line } = await ack;
  if (line !== `OK ${n}`) throw new Error(`sink answered ${JSON.stringify(line)}`);
}

async function download(s: tls.TLSSocket, n: number): Promise<void> {
  s.write(`D ${n}\n`);
  await readN(s, n, Buffer.alloc(0));
}

async function verify(line: string, t: Target, n: number): Promise<string> {
  const up = await openTunnel(line, t, 0);
  try {
    up.tls.write(`UH ${n}\n`);
    const ack = readLine(up.tls);
    const sent = createHash('sha256');
    await writeAll(up.tls, n, sent);
    const { line: answer } = await ack;
    const want = `OK ${n} ${sent.digest('hex')}`;
    if (answer !== want)
      throw new Error(`upload corrupted: sink says ${JSON.stringify(answer)}, sent ${want}`);
  } finally {
    await closeTunnel(up);
  }
  const down = await openTunnel(line, t, 0);
  try {
    down.tls.write(`DH ${n}\n`);
    const { line: expected, rest } = await readLine(down.tls);
    const got = createHash('sha256');
    await readN(down.tls, n, rest, got);
    const digest = got.digest('hex');
    if (digest !== expected) throw new Error(`download corrupted: sink sent ${expected}, received ${digest}`);
  } finally {
    await closeTunnel(down);
  }
  return `${n} bytes each way, sha256 matched`;
}

let prepared: Tunnel[] = [];

/** Wait for a batch of opens; keep what opened (so it is closed later) and fail if anything did not. */
async function settle(batch: Promise<Tunnel>[], into: Tunnel[]): Promise<void> {
  const results = await Promise.allSettled(batch);
  let firstError: unknown;
  for (const r of results) {
    if (r.status === 'fulfilled') into.push(r.value);
    else firstError ??= r.reason;
  }
  if (firstError !== undefined) throw firstError;
}

async function transferOpen(line: string, t: Target, tunnels: number, connections: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < tunnels; i += 25) {
    const batch = [];
    for (let j = i; j < Math.min(tunnels, i + 25); j++) batch.push(openTunnel(line, t, j % connections));
    await settle(batch, prepared);
  }
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function transferRun(dir: Direction, bytes: number): Promise<number> {
  if (prepared.length === 0) throw new Error('transfer-run: no open tunnels');
  const t0 = process.hrtime.bigint();
  await Promise.all(
    prepared.map((tun) => (dir === 'up' ? upload(tun.tls, bytes) : download(tun.tls, bytes))),
  );
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function transferClose(): Promise<void> {
  const all = prepared;
  prepared = [];
  await Promise.all(all.map(closeTunnel));
}

// ---------- latency ----------

function summarize(samples: number[]): LatencySummary {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
  return {
    count: sorted.length,
    p50Us: at(0.5),
    p99Us: at(0.99),
    meanUs: sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length),
    maxUs: sorted.at(-1) ?? 0,
  };
}

function endAndWait(stream: Duplex): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      stream.destroy();
      resolve();
    }, 10_000);
    stream.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    stream.resume();
    stream.end();
  });
}

/** CONNECT -> 200 on a warm connection, sequentially. */
async function latency(line: string, t: Target, count: number): Promise<LatencySummary> {
  if (t.kind === 'direct') throw new Error('no CONNECT on the direct line');
  const samples: number[] = [];
  if (t.kind === 'h2') await sessionFor(line, t, 0);
  for (let i = 0; i < count; i++) {
    const t0 = nowUs();
    const raw = await openRaw(line, t, 0);
    samples.push(nowUs() - t0);
    if (raw !== undefined) await endAndWait(raw);
  }
  return summarize(samples);
}

/** New connection: TCP + (m)TLS handshake + CONNECT -> 200 (direct: TCP + TLS handshake to the sink). */
async function newConnection(
  t: Target,
  count: number,
): Promise<{ latency: LatencySummary; handshake: LatencySummary | undefined }> {
  const samples: number[] = [];
  /** TCP connect + TLS handshake alone (until 'secureConnect'), to compare with (a)'s figure. */
  const handshakes: number[] = [];
  for (let i = 0; i < count; i++) {
    if (t.kind === 'direct') {
      const t0 = nowUs();
      const s = await innerTls(t, undefined);
      samples.push(nowUs() - t0);
      await closeTunnel({ tls: s, raw: undefined });
    } else if (t.kind === 'h2') {
      const t0 = nowUs();
      const session = await h2Connect(t, () => handshakes.push(nowUs() - t0));
      const stream = await h2Connect200(session, t.authority);
      samples.push(nowUs() - t0);
      await endAndWait(stream);
      await new Promise<void>((resolve) => session.close(resolve));
    } else {
      throw new Error('the sidecar owns its gateway connection: no new-connection figure');
    }
  }
  return {
    latency: summarize(samples),
    handshake: handshakes.length === 0 ? undefined : summarize(handshakes),
  };
}

// ---------- idle tunnels ----------

let idle: Tunnel[] = [];
let idleLine = '';

async function idleOpen(line: string, t: Target, tunnels: number, perConnection: number): Promise<number> {
  idleLine = line;
  const t0 = process.hrtime.bigint();
  // Connections 1.. (0 stays the warm one used by the throughput figures).
  for (let i = 0; i < tunnels; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(tunnels, i + 50); j++)
      batch.push(openTunnel(line, t, 1 + Math.floor(j / perConnection)));
    await settle(batch, idle);
  }
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function idleClose(): Promise<number> {
  const t0 = process.hrtime.bigint();
  const all = idle;
  idle = [];
  for (let i = 0; i < all.length; i += 100) await Promise.all(all.slice(i, i + 100).map(closeTunnel));
  // The idle tunnels' connections go too: what stays in the proxy after this is drift, not live sessions.
  await closeEntries((pools.get(idleLine) ?? []).splice(1));
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

// ---------- IPC ----------

async function run(op: Op): Promise<OpResult> {
  switch (op.op) {
    case 'setup':
      setup = op.setup;
      return { ok: true };
    case 'verify':
      return { ok: true, detail: await verify(op.line, op.target, op.bytes) };
    case 'transfer-open':
      return { ok: true, seconds: await transferOpen(op.line, op.target, op.tunnels, op.connections) };
    case 'transfer-run': {
      const seconds = await transferRun(op.dir, op.bytes);
      return { ok: true, seconds, bytes: op.bytes * prepared.length };
    }
    case 'transfer-close':
      await transferClose();
      return { ok: true };
    case 'latency':
      return { ok: true, latency: await latency(op.line, op.target, op.count) };
    case 'newconn':
      return { ok: true, ...(await newConnection(op.target, op.count)) };
    case 'idle-open':
      return { ok: true, seconds: await idleOpen(op.line, op.target, op.tunnels, op.perConnection) };
    case 'idle-close':
      return { ok: true, seconds: await idleClose() };
    case 'reset':
      await closePool(op.line);
      return { ok: true };
  }
}

process.on('message', (msg: Request) => {
  const { id, ...op } = msg;
  const limit = setup?.opTimeoutMs ?? 60_000;
  within(limit, op.op, run(op as Op)).then(
    (result) => process.send?.({ id, result } satisfies Response),
    (err: unknown) =>
      process.send?.({
        id,
        result: { ok: false, error: err instanceof Error ? err.message : String(err) },
      } satisfies Response),
  );
});
process.on('disconnect', () => process.exit(0));
