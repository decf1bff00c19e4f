// Destinations for tunnel tests, all on 127.0.0.1 inside the test process (so a test can inspect what the
// destination saw): an echo server, a "half-close" server that answers only after the client's FIN, a
// two-way bulk server that hashes what it receives while streaming its own bytes, and a black hole whose
// accept queue is full so connects to it hang (SYNs dropped) for the connect-timeout tests.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import net from 'node:net';
import { createInterface } from 'node:readline';

export type Upstream = {
  readonly port: number;
  /** Sockets accepted so far. */
  readonly accepted: () => number;
  /** Sockets accepted and not yet closed. */
  readonly openSockets: () => number;
  close(): Promise<void>;
};

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

async function serve(onSocket: (socket: net.Socket) => void): Promise<Upstream> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    onSocket(socket);
  });
  const port = await listen(server);
  return {
    port,
    accepted: () => accepted,
    openSockets: () => sockets.size,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Echo every byte; FIN answered with FIN once the echo is flushed. */
export function startEchoServer(): Promise<Upstream> {
  return serve((socket) => socket.pipe(socket));
}

/** Resets the connection (TCP RST) as soon as the first byte arrives. */
export function startResetServer(): Promise<Upstream> {
  return serve((socket) => socket.once('data', () => socket.resetAndDestroy()));
}

export type ResetOnCue = Upstream & {
  /**
   * Reset (TCP RST) the oldest accepted connection not yet reset, waiting for its accept if needed;
   * with `first`, write those bytes just before, so the RST follows them on the wire. Nothing the
   * connection sent is read.
   */
  reset(first?: Buffer): Promise<void>;
};

/** Accepts and holds each connection until the test resets it: a reset at a moment the test chooses. */
export async function startResetOnCueServer(): Promise<ResetOnCue> {
  const waiting: net.Socket[] = [];
  const wanted: ((s: net.Socket) => void)[] = [];
  const upstream = await serve((socket) => {
    const take = wanted.shift();
    if (take !== undefined) take(socket);
    else waiting.push(socket);
  });
  const next = () =>
    new Promise<net.Socket>((resolve) => {
      const s = waiting.shift();
      if (s !== undefined) resolve(s);
      else wanted.push(resolve);
    });
  return {
    ...upstream,
    async reset(first) {
      const socket = await next();
      if (first !== undefined) socket.write(first);
      socket.resetAndDestroy();
    },
  };
}

/**
 * Reads until the client's FIN, then answers `received <n> bytes <sha256>` and ends: proves that
 * END_STREAM became a FIN while the way back stayed open.
 */
export function startHalfCloseServer(): Promise<Upstream> {
  return serve((socket) => {
    const hash = createHash('sha256');
    let n = 0;
    socket.on('data', (chunk: Buffer) => {
      n += chunk.length;
      hash.update(chunk);
    });
    socket.on('end', () => {
      setTimeout(() => socket.end(`received ${n} bytes ${hash.digest('hex')}\n`), 50);
    });
  });
}

export type BulkResult = { received: number; receivedSha256: string; sent: number; sentSha256: string };

/**
 * Streams `sendBytes` of deterministic bytes to the client while hashing everything it receives; ends its
 * side after sending. `results` resolves per connection once the client's FIN has arrived.
 */
export async function startBulkServer(sendBytes: number): Promise<Upstream & { results: BulkResult[] }> {
  const results: BulkResult[] = [];
  const upstream = await serve((socket) => {
    const inHash = createHash('sha256');
    let received = 0;
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      inHash.update(chunk);
    });
    const { sent, sha256 } = pumpPattern(socket, sendBytes, 0x5eed);
    socket.on('end', () => {
      void sent.then(() => {
        results.push({ received, receivedSha256: inHash.digest('hex'), sent: sendBytes, sentSha256: sha256 });
      });
    });
  });
  return Object.assign(upstream, { results });
}

/** Deterministic pseudo-random block, so both sides can hash without keeping the data. */
export function patternBlock(seed: number, size = 64 * 1024): Buffer {
  const block = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    block.writeUInt32LE(x >>> 0, i);
  }
  return block;
}

/** Write `total` bytes of the pattern with backpressure, then end. Returns the sha256 of what is sent. */
export function pumpPattern(
  writable: NodeJS.WritableStream & { destroyed?: boolean },
  total: number,
  seed: number,
  end = true,
): { sent: Promise<void>; sha256: string } {
  const block = patternBlock(seed);
  const hash = createHash('sha256');
  const blocks: Buffer[] = [];
  for (let off = 0; off < total; off += block.length) {
    const piece = block.subarray(0, Math.min(block.length, total - off));
    hash.update(piece);
    blocks.push(piece);
  }
  const sent = new Promise<void>((resolve, reject) => {
    let i = 0;
    const write = () => {
      while (i < blocks.length) {
        if (writable.destroyed) return reject(new Error('destroyed while sending'));
        const ok = writable.write(blocks[i++] as Buffer);
        if (!ok) {
          writable.once('drain', write);
          return;
        }
      }
      if (end) writable.end(() => resolve());
      else resolve();
    };
    write();
  });
  return { sent, sha256: hash.digest('hex') };
}

export type BlackHole = { readonly port: number; close(): Promise<void> };

/**
 * A loopback port where connects hang: a listening socket that never accepts, with its (tiny) accept queue
 * filled first, so further SYNs are dropped. Node always accepts, hence a small python3 helper.
 */
export async function startBlackHole(): Promise<BlackHole> {
  const script = [
    'import socket, sys, time',
    's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)',
    'port = s.getsockname()[1]',
    'fill = []',
    'for _ in range(4):',
    '    c = socket.socket(); c.setblocking(False)',
    '    try: c.connect(("127.0.0.1", port))',
    '    except (BlockingIOError, OSError): pass',
    '    fill.append(c)',
    'time.sleep(0.2)',
    'print(port, flush=True)',
    'sys.stdin.read()',
  ].join('\n');
  const child = spawn('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.once('line', (line) => resolve(Number(line.trim())));
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`black hole helper exited ${code}`)));
  });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.stdin.end();
        setTimeout(() => child.kill('SIGKILL'), 2000).unref();
      }),
  };
}
