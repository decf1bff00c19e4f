// core/write-coalescing.ts on real loopback sockets: writes in one turn stay corked until the next turn,
// then reach the peer, for every socket corked in that turn.
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WriteCoalescer } from '../../core/write-coalescing.js';

describe('WriteCoalescer.corkUntilNextTurn', () => {
  const coalescer = new WriteCoalescer();
  const server = net.createServer();
  const received: Buffer[][] = [];
  const clients: net.Socket[] = [];

  beforeAll(async () => {
    server.on('connection', (s) => {
      const chunks: Buffer[] = [];
      received.push(chunks);
      s.on('data', (c: Buffer) => chunks.push(c));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as net.AddressInfo;
    for (let i = 0; i < 3; i++) {
      const c = net.connect({ host: '127.0.0.1', port });
      await once(c, 'connect');
      clients.push(c);
    }
  });

  afterAll(async () => {
    for (const c of clients) c.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('holds writes of one turn corked, once per socket, and uncorks them all on the next turn', async () => {
    for (const c of clients) {
      coalescer.corkUntilNextTurn(c);
      c.write('a');
      coalescer.corkUntilNextTurn(c);
      c.write('b');
      expect(c.writableCorked).toBe(1);
      expect(c.writableLength).toBe(2);
    }
    await new Promise((resolve) => setImmediate(resolve));
    for (const c of clients) {
      expect(c.writableCorked).toBe(0);
      expect(c.writableLength).toBe(0);
    }
    const deadline = Date.now() + 5_000;
    while (received.reduce((n, chunks) => n + Buffer.concat(chunks).length, 0) < 6 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(received.map((chunks) => Buffer.concat(chunks).toString())).toEqual(['ab', 'ab', 'ab']);
  });

  it('leaves a socket its caller corked itself to its caller', async () => {
    const c = clients[0] as net.Socket;
    c.cork();
    coalescer.corkUntilNextTurn(c);
    await new Promise((resolve) => setImmediate(resolve));
    expect(c.writableCorked).toBe(1);
    c.uncork();
    expect(c.writableCorked).toBe(0);
  });
});
