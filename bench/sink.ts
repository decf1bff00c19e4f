/**
 * TLS 1.3 sink: the destination every bench line talks to (protocol in protocol.ts). Upload: discards and
 * counts (and hashes on request). Download: streams from one preallocated buffer, honouring backpressure.
 *
 *   node dist/bench/sink.js --port P --cert FILE --key FILE
 */
import { createHash, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' } },
});
if (!values.port || !values.cert || !values.key) {
  process.stderr.write('usage: sink --port P --cert FILE --key FILE\n');
  process.exit(2);
}

const CHUNK = 1024 * 1024;
/** The download payload: 1 MiB of random bytes, repeated. */
const payload = randomFillSync(Buffer.allocUnsafe(CHUNK));

function downloadHash(n: number): string {
  const h = createHash('sha256');
  for (let left = n; left > 0; left -= CHUNK) h.update(left >= CHUNK ? payload : payload.subarray(0, left));
  return h.digest('hex');
}

function serve(socket: tls.TLSSocket): void {
  socket.on('error', () => {});
  let header = '';
  socket.on('data', function onHeader(chunk: Buffer) {
    const nl = chunk.indexOf(10);
    if (nl === -1) {
      header += chunk.toString('latin1');
      if (header.length > 64) socket.destroy();
      return;
    }
    header += chunk.toString('latin1', 0, nl);
    const rest = chunk.subarray(nl + 1);
    socket.removeListener('data', onHeader);
    const m = /^(U|UH|D|DH) (\d+)$/.exec(header);
    if (m === null) {
      socket.end('ERR bad command\n');
      return;
    }
    const n = Number(m[2]);
    if (m[1] === 'U' || m[1] === 'UH') receive(socket, n, m[1] === 'UH', rest);
    else send(socket, n, m[1] === 'DH');
  });
}

function receive(socket: tls.TLSSocket, n: number, hashed: boolean, first: Buffer): void {
  const hash = hashed ? createHash('sha256') : undefined;
  let got = 0;
  const take = (chunk: Buffer) => {
    if (got >= n) return;
    const use = chunk.length > n - got ? chunk.subarray(0, n - got) : chunk;
    got += use.length;
    hash?.update(use);
    if (got === n) socket.write(hashed ? `OK ${n} ${hash?.digest('hex')}\n` : `OK ${n}\n`);
  };
  if (first.length > 0) take(first);
  socket.on('data', take);
}

function send(socket: tls.TLSSocket, n: number, hashed: boolean): void {
  if (hashed) socket.write(`${downloadHash(n)}\n`);
  let left = n;
  const pump = () => {
    while (left > 0) {
      const len = Math.min(left, CHUNK);
      left -= len;
      if (!socket.write(len === CHUNK ? payload : payload.subarray(0, len))) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  pump();
}

const server = tls.createServer({
  cert: readFileSync(values.cert),
  key: readFileSync(values.key),
  minVersion: 'TLSv1.3',
});
server.on('connection', (s) => s.setNoDelay(true));
server.on('secureConnection', serve);
// Latency probes dial and hang up without a handshake: not an error here.
server.on('tlsClientError', () => {});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ listening: Number(values.port) })}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
