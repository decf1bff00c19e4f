/**
 * The naive-Node baseline (bench line b): a minimal HTTP/2 CONNECT proxy with the receive windows raised as
 * the gateway raises them (stream 4 MiB, connection 32 MiB), and nothing else: no authorization, no
 * limits, no logging.
 * It asks for a client certificate (unchecked) so its handshake costs what the gateway's does.
 *
 *   node dist/bench/naive-proxy.js --port P --cert FILE --key FILE
 */
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' } },
});
if (!values.port || !values.cert || !values.key) {
  process.stderr.write('usage: naive-proxy --port P --cert FILE --key FILE\n');
  process.exit(2);
}

const STREAM_WINDOW = 4 * 1024 * 1024;
const CONNECTION_WINDOW = 32 * 1024 * 1024;
const { NGHTTP2_CONNECT_ERROR } = http2.constants;

const server = http2.createSecureServer({
  cert: readFileSync(values.cert),
  key: readFileSync(values.key),
  minVersion: 'TLSv1.3',
  requestCert: true,
  rejectUnauthorized: false,
  settings: { initialWindowSize: STREAM_WINDOW, maxConcurrentStreams: 10_000 },
  maxSessionMemory: 128,
});
server.on('connection', (socket: net.Socket) => socket.setNoDelay(true));
server.on('session', (session) => {
  session.on('error', () => {});
  session.setLocalWindowSize(CONNECTION_WINDOW);
});

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
  const upstream = net.connect({ host: m[1]?.replace(/^\[|\]$/g, ''), port: Number(m[2]) });
  upstream.setNoDelay(true);
  upstream.once('connect', () => {
    stream.respond({ ':status': 200 });
    // pipe(): backpressure both ways and half-close (client END_STREAM -> FIN, upstream FIN -> END_STREAM).
    stream.pipe(upstream);
    upstream.pipe(stream);
  });
  upstream.on('error', () => {
    if (!stream.headersSent) stream.respond({ ':status': 502 }, { endStream: true });
    else stream.close(NGHTTP2_CONNECT_ERROR);
  });
  stream.on('close', () => upstream.destroy());
});

server.listen({ host: '127.0.0.1', port: Number(values.port) }, () => {
  process.stdout.write(`${JSON.stringify({ listening: Number(values.port) })}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
