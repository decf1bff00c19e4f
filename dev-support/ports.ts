// Loopback port helpers for tests and the benchmark. Only 127.0.0.1 is ever bound or dialed.
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
