// Abuse resistance (issue #7), protocol floods, slow peers and readiness: a real gateway process, a real
// (own) PostgreSQL that the readiness case stops, loopback only. Each case checks what the gateway does to
// the abusive client AND that an unrelated well-behaved client on another connection (another identity)
// still moves 4 MiB through an echo tunnel, sha256-checked, during or right after the abuse. Every loop is
// bounded; assertions are on behaviour, not on timing. The limits are in gateway-abuse-limits.test.ts.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http2, { constants } from 'node:http2';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Carrier } from '../../dev-support/pki.js';
import type { PgHandle } from '../../dev-support/postgres.js';
import { goodTransfer, MiB } from '../support/abuse-clients.js';
import {
  closed,
  connectH2,
  type GatewayProcess,
  openTunnel,
  startGatewayProcess,
} from '../support/gateway.js';
import { startOwnRegistry } from '../support/own-registry.js';
import { frame, hpackLiteral, rawH2 } from '../support/raw-h2.js';
import { patternBlock, startEchoServer, type Upstream } from '../support/upstreams.js';

const HANDSHAKE_TIMEOUT_MS = 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resident set size of a process, in bytes (Linux /proc). */
function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

describe('gateway abuse resistance (issue #7)', () => {
  let pg: PgHandle;
  let echo: Upstream;
  /** Default limits, small handshake timeout. */
  let gw: GatewayProcess;
  let good: Carrier;
  let abuser: Carrier;
  // The flooding destination for the slow-reader case: streams until told to stop, counting what the
  // gateway accepted from it (socket.write with backpressure honoured).
  let flood: net.Server;
  let floodPort: number;
  let floodSent = 0;
  const floodSockets = new Set<net.Socket>();
  const FLOOD_TOTAL = 64 * MiB;

  beforeAll(async () => {
    const registry = await startOwnRegistry({
      dbName: 'gateway_abuse_floods',
      principalId: 'org-abuse',
      identities: ['agent-good', 'agent-abuser'],
      destinations: ['echo.test:443', 'flood.test:443'],
    });
    pg = registry.pg;
    [good, abuser] = registry.carriers as [Carrier, Carrier];
    echo = await startEchoServer();
    flood = net.createServer((socket) => {
      floodSockets.add(socket);
      socket.on('close', () => floodSockets.delete(socket));
      socket.on('error', () => {});
      socket.resume();
      const block = patternBlock(7);
      const pump = () => {
        while (floodSent < FLOOD_TOTAL && !socket.destroyed) {
          floodSent += block.length;
          if (!socket.write(block)) {
            socket.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    floodPort = await new Promise<number>((resolve) =>
      flood.listen({ host: '127.0.0.1', port: 0 }, () => resolve((flood.address() as net.AddressInfo).port)),
    );
    gw = await startGatewayProcess({
      databaseUrl: registry.dbUrl,
      config: {
        server: { handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS },
        upstream: {
          overrides: {
            'echo.test:443': `127.0.0.1:${echo.port}`,
            'flood.test:443': `127.0.0.1:${floodPort}`,
          },
        },
        observability: { log_level: 'info' },
      },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    for (const s of floodSockets) s.destroy();
    await new Promise<void>((r) => (flood ? flood.close(() => r()) : r()));
    await echo?.close();
    await pg?.destroy();
  });

  describe('protocol floods', () => {
    it('refuses a header block larger than max_header_list_bytes; other clients unaffected', async () => {
      const s = http2.connect(`https://localhost:${gw.port}`, {
        ca: gw.caPem,
        servername: 'localhost',
        cert: abuser.certPem,
        key: abuser.keyPem,
        maxSendHeaderBlockLength: 4 * MiB,
      });
      s.on('error', () => {});
      await new Promise<void>((resolve, reject) => {
        s.once('connect', () => resolve());
        s.once('error', reject);
      });
      try {
        const huge = randomBytes(48 * 1024).toString('base64'); // 64 KiB, 4x the 16 KiB limit
        const stream = s.request({ ':method': 'CONNECT', ':authority': 'echo.test:443', 'x-junk': huge });
        stream.on('error', () => {});
        let status: number | undefined;
        stream.once('response', (h) => {
          status = Number(h[':status']);
        });
        const goodRun = goodTransfer(gw, good);
        const { rstCode } = await closed(stream, 20_000).catch(() => ({ rstCode: -1 }));
        // Never tunnelled: reset with ENHANCE_YOUR_CALM, as node does once SETTINGS are ACKed; this request
        // went out in the client's first flight, which node alone would accept (see server.ts onStream).
        expect(status).toBeUndefined();
        expect(rstCode).toBe(constants.NGHTTP2_ENHANCE_YOUR_CALM);
        await goodRun;
      } finally {
        s.destroy();
      }
      expect(gw.proc.exitInfo()).toBeNull();
    });

    it('cuts off an endless CONTINUATION stream with bounded memory; other clients unaffected', async () => {
      const rssBefore = rssBytes(gw.proc.pid);
      const raw = await rawH2(gw.port, gw.caPem, abuser);
      // HEADERS for stream 1 without END_HEADERS, then CONTINUATION frames that never end it.
      const start = Buffer.concat([
        hpackLiteral(':method', 'CONNECT'),
        hpackLiteral(':authority', 'echo.test:443'),
      ]);
      await raw.write(frame(0x1, 0x0, 1, start));
      const field = hpackLiteral('x-flood', 'a'.repeat(100));
      const chunk = Buffer.concat(Array.from({ length: Math.floor(16_000 / field.length) }, () => field));
      const cont = frame(0x9, 0x0, 1, chunk);
      const goodRun = goodTransfer(gw, good);
      let sent = 0;
      const MAX_FRAMES = 4096; // 64 MiB of header block, if nobody stops us
      for (; sent < MAX_FRAMES; sent++) {
        if (!(await raw.write(cont))) break;
      }
      await Promise.race([raw.gone, sleep(10_000)]);
      const cutOff = raw.socket.destroyed || raw.goaways.length > 0 || raw.resets.length > 0;
      raw.socket.destroy();
      // Seen: node's header pair cap (128) resets stream 1 (ENHANCE_YOUR_CALM) within a few frames, and
      // the CONTINUATION frames that keep coming for it end the connection (GOAWAY).
      const seen = `${sent} frames sent; GOAWAY ${raw.goaways}; RST ${JSON.stringify(raw.resets)}`;
      expect(cutOff, `CONTINUATION flood still open: ${seen}`).toBe(true);
      expect(sent, seen).toBeLessThan(MAX_FRAMES);
      await goodRun;
      expect(rssBytes(gw.proc.pid) - rssBefore).toBeLessThan(48 * MiB);
      expect(gw.proc.exitInfo()).toBeNull();
    });

    it('answers a rapid-reset client with GOAWAY ENHANCE_YOUR_CALM while another client transfers 4 MiB', async () => {
      const s = await connectH2(gw.port, { ca: gw.caPem, carrier: abuser });
      const goaway = new Promise<number>((resolve) => s.once('goaway', (code) => resolve(code)));
      const goodRun = goodTransfer(gw, good);
      // Until the GOAWAY ends the session: CONNECTs the rate limiter answers first do not count as resets.
      for (let i = 0; i < 1000 && !s.destroyed && !s.closed; i++) {
        const stream = s.request({ ':method': 'CONNECT', ':authority': 'echo.test:443' });
        stream.on('error', () => {});
        stream.close(constants.NGHTTP2_CANCEL);
        if (i % 20 === 19) await sleep(20);
      }
      expect(await goaway).toBe(constants.NGHTTP2_ENHANCE_YOUR_CALM);
      s.destroy();
      await goodRun;
    });

    it('survives a SETTINGS flood (10,000 frames) and keeps serving others', async () => {
      const rssBefore = rssBytes(gw.proc.pid);
      // Not reading the ACKs is the abusive part: they pile up on the gateway's side.
      const raw = await rawH2(gw.port, gw.caPem, abuser, false);
      raw.socket.pause();
      const settings = Buffer.alloc(6);
      settings.writeUInt16BE(0x3, 0); // SETTINGS_MAX_CONCURRENT_STREAMS
      const goodRun = goodTransfer(gw, good);
      const batch: Buffer[] = [];
      for (let i = 0; i < 10_000; i++) {
        settings.writeUInt32BE(100 + (i % 50), 2);
        batch.push(frame(0x4, 0x0, 0, Buffer.from(settings)));
      }
      for (let i = 0; i < batch.length; i += 500) {
        if (
          !(await Promise.race([
            raw.write(Buffer.concat(batch.slice(i, i + 500))),
            sleep(5000).then(() => false),
          ]))
        )
          break;
      }
      await goodRun;
      raw.socket.destroy();
      expect(gw.proc.exitInfo()).toBeNull();
      expect((await fetch(`http://127.0.0.1:${gw.adminPort}/healthz`)).status).toBe(200);
      expect(rssBytes(gw.proc.pid) - rssBefore).toBeLessThan(48 * MiB);
      await goodTransfer(gw, good);
    });
  });

  describe('slow peers', () => {
    it('pauses the destination for a client that never reads (window 0): bounded memory, others unaffected', async () => {
      const s = http2.connect(`https://localhost:${gw.port}`, {
        ca: gw.caPem,
        servername: 'localhost',
        cert: abuser.certPem,
        key: abuser.keyPem,
        settings: { initialWindowSize: 0 },
      });
      s.on('error', () => {});
      await new Promise<void>((resolve, reject) => {
        s.once('connect', () => resolve());
        s.once('error', reject);
      });
      try {
        const rssBefore = rssBytes(gw.proc.pid);
        floodSent = 0;
        const t = await openTunnel(s, 'flood.test:443');
        expect(t.status).toBe(200);
        // Wait until the destination is stalled (nothing more accepted for 1.5 s) or has pushed it all.
        let last = -1;
        for (let i = 0; i < 40 && floodSent < FLOOD_TOTAL; i++) {
          await sleep(1500);
          if (floodSent === last) break;
          last = floodSent;
        }
        const stalledAt = floodSent;
        // Backpressure: the gateway stopped reading the destination after a few MiB of buffers
        // (kernel socket buffers included), far short of the 64 MiB it was offered.
        expect(stalledAt, `destination pushed ${stalledAt} bytes`).toBeLessThan(32 * MiB);
        const grown = rssBytes(gw.proc.pid) - rssBefore;
        expect(grown, `gateway RSS grew ${grown} bytes`).toBeLessThan(48 * MiB);
        // While that tunnel is stuck, other clients are not.
        await goodTransfer(gw, good);
        expect(floodSent - stalledAt).toBeLessThan(4 * MiB);
        t.stream.close(constants.NGHTTP2_CANCEL);
      } finally {
        s.destroy();
      }
      await expect.poll(() => floodSockets.size, { timeout: 10_000 }).toBe(0);
    }, 120_000);

    it('drops TCP connections that never send a ClientHello after handshake_timeout_ms', async () => {
      const N = 50;
      const sockets = await Promise.all(
        Array.from(
          { length: N },
          () =>
            new Promise<net.Socket>((resolve, reject) => {
              const c = net.connect({ host: '127.0.0.1', port: gw.port }, () => resolve(c));
              c.on('error', reject);
            }),
        ),
      );
      const closedAll = Promise.all(
        sockets.map(
          (c) =>
            new Promise<void>((resolve) => {
              c.on('error', () => {});
              if (c.destroyed) resolve();
              c.once('close', () => resolve());
            }),
        ),
      );
      const goodRun = goodTransfer(gw, good);
      const outcome = await Promise.race([closedAll.then(() => 'closed'), sleep(30_000).then(() => 'open')]);
      for (const c of sockets) c.destroy();
      expect(outcome).toBe('closed');
      await goodRun;
    });
  });

  describe('readiness', () => {
    it('/readyz: 200, then 503 naming the registry while PostgreSQL is down, 200 again after it is back', async () => {
      const readyz = async () => {
        const res = await fetch(`http://127.0.0.1:${gw.adminPort}/readyz`);
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      };
      expect((await readyz()).status).toBe(200);
      await pg.stop();
      try {
        await expect.poll(async () => (await readyz()).status, { timeout: 20_000, interval: 250 }).toBe(503);
        const down = await readyz();
        expect(down.body['failing']).toEqual(['registry']);
        expect(down.body['checks']).toMatchObject({ registry: { ok: false }, listener: { ok: true } });
      } finally {
        await pg.start();
      }
      await expect.poll(async () => (await readyz()).status, { timeout: 30_000, interval: 250 }).toBe(200);
      // The same gateway process (never restarted) serves tunnels again.
      await goodTransfer(gw, good);
      expect(gw.proc.exitInfo()).toBeNull();
    }, 90_000);
  });
});
