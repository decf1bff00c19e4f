/**
 * What a larger SETTINGS_MAX_FRAME_SIZE saves the receiving side (bench/README.md, "Lever 1–2: frame size
 * and many tunnels"). node:http2 never sends a DATA frame over 16 KiB, so a raw HTTP/2 client writes the
 * frames: it uploads TOTAL_MIB (512) MiB on one CONNECT stream in DATA frames of each given size to a
 * node:http2 TLS server (a child process, advertising that size) that forwards the bytes to a TCP sink
 * as the gateway does. Prints the server's CPU-s/GiB (/proc utime + stime), MB/s and JS 'data' callbacks
 * per MiB, median of the repetitions. Loopback only.
 *
 *   node dist/bench/experiments/frame-size.js [sizes, default 16384,65536,262144,1048576] [reps, default 3]
 *
 * Needs `openssl` (a throwaway self-signed certificate). Hold the bench lock while it runs.
 */
import { type ChildProcess, execFileSync, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { ticksPerSecond } from '../support/proc.js';

const MiB = 1024 * 1024;

function serve(dir: string, maxFrameSize: number, sinkPort: number): void {
  const server = http2.createSecureServer({
    key: readFileSync(path.join(dir, 'key.pem')),
    cert: readFileSync(path.join(dir, 'cert.pem')),
    ALPNProtocols: ['h2'],
    settings: { maxFrameSize, initialWindowSize: 4 * MiB, enablePush: false },
  });
  server.on('session', (s) => s.setLocalWindowSize(32 * MiB));
  let callbacks = 0;
  server.on('stream', (stream) => {
    const sock = net.connect(sinkPort, '127.0.0.1', () => stream.respond({ ':status': 200 }));
    stream.on('data', (d: Buffer) => {
      callbacks++;
      if (!sock.write(d)) stream.pause();
    });
    sock.on('drain', () => stream.resume());
    stream.on('end', () => sock.end());
    sock.on('close', () => stream.close());
  });
  process.on('message', () => {
    process.send?.({ callbacks });
    callbacks = 0;
  });
  server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as net.AddressInfo).port }));
}

function frameHeader(type: number, flags: number, streamId: number, length: number): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId, 5);
  return h;
}

/** HPACK literal without indexing, new name (RFC 7541 §6.2.2); short strings only. */
function literal(name: string, value: string): Buffer {
  return Buffer.concat([
    Buffer.from([0, name.length]),
    Buffer.from(name),
    Buffer.from([value.length]),
    Buffer.from(value),
  ]);
}

function cpuSeconds(pid: number): number {
  const fields = (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] as string).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
}

type Sample = { cpuPerGiB: number; mbps: number; callbacksPerMiB: number };

async function upload(
  child: ChildProcess,
  port: number,
  size: number,
  total: number,
  sink: Sink,
): Promise<Sample> {
  const s = tls.connect({ port, host: '127.0.0.1', ALPNProtocols: ['h2'], rejectUnauthorized: false });
  await once(s, 'secureConnect');
  let connWindow = 65_535;
  let streamWindow = 65_535;
  let wake: (() => void) | undefined;
  let answered: () => void = () => {};
  const ready = new Promise<void>((r) => {
    answered = r;
  });
  let buf = Buffer.alloc(0);
  s.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const type = buf[3];
      const flags = buf[4] as number;
      const sid = buf.readUInt32BE(5) & 0x7fffffff;
      const p = buf.subarray(9, 9 + len);
      if (type === 0x4 && (flags & 0x1) === 0) {
        for (let i = 0; i + 6 <= len; i += 6) {
          if (p.readUInt16BE(i) === 0x4) streamWindow += p.readUInt32BE(i + 2) - 65_535;
        }
        s.write(frameHeader(0x4, 0x1, 0, 0));
      }
      if (type === 0x8) {
        const increment = p.readUInt32BE(0) & 0x7fffffff;
        if (sid === 0) connWindow += increment;
        else streamWindow += increment;
        const w = wake;
        wake = undefined;
        w?.();
      }
      if (type === 0x1 && sid === 1) answered();
      buf = buf.subarray(9 + len);
    }
  });
  const settings = Buffer.alloc(6);
  settings.writeUInt16BE(0x4, 0);
  settings.writeUInt32BE(4 * MiB, 2);
  s.write(
    Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frameHeader(0x4, 0, 0, 6), settings]),
  );
  const block = Buffer.concat([literal(':method', 'CONNECT'), literal(':authority', '127.0.0.1:1')]);
  s.write(Buffer.concat([frameHeader(0x1, 0x4, 1, block.length), block]));
  await ready;
  const payload = Buffer.alloc(size, 7);
  const done = sink.expect(total);
  const cpu0 = cpuSeconds(child.pid as number);
  const t0 = performance.now();
  for (let sent = 0; sent < total; ) {
    const n = Math.min(size, total - sent);
    while (connWindow < n || streamWindow < n) await new Promise<void>((r) => (wake = r));
    connWindow -= n;
    streamWindow -= n;
    sent += n;
    s.cork();
    s.write(frameHeader(0x0, 0, 1, n));
    const ok = s.write(n === size ? payload : payload.subarray(0, n));
    s.uncork();
    if (!ok) await once(s, 'drain');
  }
  await done;
  const cpu = cpuSeconds(child.pid as number) - cpu0;
  const seconds = (performance.now() - t0) / 1000;
  child.send('callbacks');
  const [{ callbacks }] = (await once(child, 'message')) as [{ callbacks: number }];
  s.destroy();
  return {
    cpuPerGiB: cpu / (total / 1024 ** 3),
    mbps: total / 1e6 / seconds,
    callbacksPerMiB: callbacks / (total / MiB),
  };
}

type Sink = { port: number; expect(bytes: number): Promise<void>; close(): void };

async function startSink(): Promise<Sink> {
  let received = 0;
  let want = Number.POSITIVE_INFINITY;
  let done: () => void = () => {};
  const server = net.createServer((c) =>
    c.on('data', (d: Buffer) => {
      received += d.length;
      if (received >= want) {
        want = Number.POSITIVE_INFINITY;
        done();
      }
    }),
  );
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    expect(bytes) {
      received = 0;
      want = bytes;
      return new Promise((r) => {
        done = r;
      });
    },
    close: () => server.close(),
  };
}

async function main(): Promise<void> {
  const sizes = (process.argv[2] ?? '16384,65536,262144,1048576').split(',').map(Number);
  const reps = Number(process.argv[3] ?? 3);
  const total = Number(process.env['TOTAL_MIB'] ?? 512) * MiB;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'agw-frame-size-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      path.join(dir, 'key.pem'),
      '-out',
      path.join(dir, 'cert.pem'),
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
    ],
    { stdio: 'ignore' },
  );
  const sink = await startSink();
  const samples = new Map<number, Sample[]>();
  try {
    for (let r = 0; r < reps; r++) {
      for (const size of sizes) {
        const child = fork(fileURLToPath(import.meta.url), [
          '--serve',
          dir,
          String(Math.max(size, 16_384)),
          String(sink.port),
        ]);
        const [{ port }] = (await once(child, 'message')) as [{ port: number }];
        const sample = await upload(child, port, size, total, sink);
        samples.set(size, [...(samples.get(size) ?? []), sample]);
        process.stderr.write(`${size}: ${JSON.stringify(sample)}\n`);
        child.kill();
        await once(child, 'exit');
      }
    }
  } finally {
    sink.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1] as number;
  console.log('| DATA frame | server CPU-s/GiB | MB/s | data callbacks/MiB |');
  console.log('| --- | --- | --- | --- |');
  for (const size of sizes) {
    const xs = samples.get(size) ?? [];
    console.log(
      `| ${size} | ${median(xs.map((x) => x.cpuPerGiB)).toFixed(2)} | ${median(xs.map((x) => x.mbps)).toFixed(0)} | ${median(xs.map((x) => x.callbacksPerMiB)).toFixed(0)} |`,
    );
  }
}

if (process.argv[2] === '--serve') {
  serve(process.argv[3] as string, Number(process.argv[4]), Number(process.argv[5]));
} else {
  await main();
}
