/**
 * Bench line (x) for the request-path owner: naive-proxy.ts plus the three data-path changes the profile
 * points at, each switchable, so their effect is measured side by side with (b) and (c):
 *
 *   npm run bench -- --lines b,c --extra-proxy dist/bench/experiments/coalescing-proxy.js --syscalls \
 *     "--extra-proxy-node-args=--initial-heap-size=64"
 *
 *   EXP_CORK=0|1            cork the upstream socket until setImmediate (default 1; the gateway does this)
 *   EXP_UP_HWM=bytes        writableHighWaterMark of the upstream socket (default 1 MiB; node's is 16 KiB,
 *                           which makes write() return false after one DATA frame, so the stream pauses and
 *                           every frame costs its own event-loop turn and writev)
 *   EXP_DOWN_LIMIT=bytes    pause the upstream socket only when the HTTP/2 stream holds more than this
 *                           (default 1 MiB; 0 = on every write() === false, i.e. on every 64 KiB read)
 *
 * Not a product: no authorization, no limits, no logging.
 */
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' } },
});
if (!values.port || !values.cert || !values.key) {
  process.stderr.write('usage: coalescing-proxy --port P --cert FILE --key FILE\n');
  process.exit(2);
}
const CORK = (process.env['EXP_CORK'] ?? '1') === '1';
const UP_HWM = Number(process.env['EXP_UP_HWM'] ?? 1024 * 1024);
const DOWN_LIMIT = Number(process.env['EXP_DOWN_LIMIT'] ?? 1024 * 1024);

const server = http2.createSecureServer({
  cert: readFileSync(values.cert),
  key: readFileSync(values.key),
  minVersion: 'TLSv1.3',
  requestCert: true,
  rejectUnauthorized: false,
  settings: { initialWindowSize: 4 * 1024 * 1024, maxConcurrentStreams: 10_000 },
  maxSessionMemory: 128,
});
server.on('connection', (socket: net.Socket) => socket.setNoDelay(true));
server.on('session', (session) => {
  session.on('error', () => {});
  session.setLocalWindowSize(32 * 1024 * 1024);
});

let corked: net.Socket[] = [];
let flushScheduled = false;
function corkUntilNextTurn(socket: net.Socket): void {
  if (socket.writableCorked > 0) return;
  socket.cork();
  corked.push(socket);
  if (flushScheduled) return;
  flushScheduled = true;
  setImmediate(() => {
    flushScheduled = false;
    const batch = corked;
    corked = [];
    for (const s of batch) if (s.writableCorked > 0) s.uncork();
  });
}

server.on('stream', (stream, headers) => {
  stream.on('error', () => {});
  if (headers[':method'] !== 'CONNECT') {
    stream.respond({ ':status': 405 }, { endStream: true });
    return;
  }
  const m = /^(.+):(\d+)$/.exec(headers[':authority'] ?? '');
  if (m === null) {
    stream.respond({ ':status': 400 }, { endStream: true });
    return;
  }
  // net.Socket passes stream options through to Duplex (the types do not say so).
  const options = { host: m[1] as string, port: Number(m[2]), writableHighWaterMark: UP_HWM };
  const upstream = net.connect(options as net.NetConnectOpts);
  upstream.setNoDelay(true);
  upstream.once('connect', () => {
    stream.respond({ ':status': 200 });
    stream.on('data', (chunk: Buffer) => {
      if (CORK) corkUntilNextTurn(upstream);
      if (!upstream.write(chunk)) stream.pause();
    });
    upstream.on('drain', () => stream.resume());
    stream.on('end', () => upstream.end());
    upstream.on('data', (chunk: Buffer) => {
      const ok = stream.write(chunk);
      if (DOWN_LIMIT > 0 ? stream.writableLength > DOWN_LIMIT : !ok) upstream.pause();
    });
    stream.on('drain', () => upstream.resume());
    upstream.on('end', () => stream.end());
  });
  upstream.on('error', () => {
    if (!stream.headersSent) stream.respond({ ':status': 502 }, { endStream: true });
    else stream.close(http2.constants.NGHTTP2_CONNECT_ERROR);
  });
  stream.on('close', () => upstream.destroy());
});

server.listen({ host: '127.0.0.1', port: Number(values.port) }, () => {
  process.stdout.write(`${JSON.stringify({ listening: Number(values.port) })}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
