// Loopback port helpers for tests, the benchmark and the demo. Only 127.0.0.1 is ever bound or dialed.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** A port that was free on 127.0.0.1 a moment ago (bind :0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error('freePort: unexpected server address'));
        return;
      }
      server.close((err) => (err ? reject(err) : resolve(address.port)));
    });
  });
}

/** True when `port` can be bound on 127.0.0.1 right now. */
export function isPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** Two consecutive free ports (P, P+1), e.g. swtpm's data + control ports. Returns P. */
export async function freePortPair(attempts = 50): Promise<number> {
  for (let i = 0; i < attempts; i++) {
    const p = await freePort();
    if (p < 65535 && (await isPortFree(p + 1))) return p;
  }
  throw new Error('freePortPair: no two consecutive free ports found');
}

/** Ports below the kernel's ephemeral range (32768 and up by default), which it never hands to a client socket. */
const QUIET_LOW = 20_000;
const QUIET_HIGH = 32_767;

/**
 * A port in 20000..32767 free on 127.0.0.1 right now (with `pair`, P and P+1: swtpm's data and control
 * ports), for a long-lived server such as the demo's: no outgoing connection is handed it between this
 * choice and the bind. Ports in `taken` are skipped and the chosen ones are added to it. When that range is
 * full, any free port.
 */
export async function quietFreePort(opts: { pair?: boolean; taken?: Set<number> } = {}): Promise<number> {
  const taken = opts.taken ?? new Set<number>();
  const claim = async (p: number): Promise<boolean> => {
    const ports = opts.pair ? [p, p + 1] : [p];
    if (ports.some((x) => taken.has(x) || x > 65535)) return false;
    if (!(await Promise.all(ports.map(isPortFree))).every(Boolean)) return false;
    for (const x of ports) taken.add(x);
    return true;
  };
  const span = QUIET_HIGH - QUIET_LOW + (opts.pair ? 0 : 1);
  for (let i = 0; i < 200; i++) {
    const p = QUIET_LOW + Math.floor(Math.random() * span);
    if (await claim(p)) return p;
  }
  for (let i = 0; i < 50; i++) {
    const p = await freePort();
    if (await claim(p)) return p;
  }
  throw new Error(`quietFreePort: no free ${opts.pair ? 'pair of ports' : 'port'} on 127.0.0.1`);
}

function tryConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      socket.removeAllListeners();
      socket.on('error', () => {});
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Resolve once 127.0.0.1:`port` accepts a connection; reject after `timeoutMs`, or as soon as `alive()`
 * turns false (the process that should listen there died: no point waiting out the timeout).
 */
export async function waitForPort(
  port: number,
  timeoutMs = 10_000,
  alive: () => boolean = () => true,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await tryConnect(port)) return;
    if (!alive()) throw new Error(`waitForPort: process behind 127.0.0.1:${port} exited before listening`);
    if (Date.now() >= deadline)
      throw new Error(`waitForPort: 127.0.0.1:${port} not accepting after ${timeoutMs} ms`);
    await sleep(50);
  }
}
