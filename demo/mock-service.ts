/**
 * Static HTTPS mock for the demo's destinations (`docstore`, `messaging`).
 *
 *   node dist/demo/mock-service.js --name docstore --listen 127.0.0.1:9441 --cert certs/mock-services.pem \
 *     --key certs/mock-services-key.pem
 *
 * GET /health → {"status":"ok","service":"<name>"}; GET /documents (docstore) or /messages (messaging) → two
 * items; anything else → 404 JSON (405 for a method other than GET/HEAD). One JSON log line per request.
 * SIGTERM/SIGINT close the listener and exit 0.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';
import { type HostPort, parseHostPort } from '../core/host-port.js';
import { isMain } from './is-main.js';

type Item = Record<string, string>;

/** What each known service serves besides /health. */
export const SERVICE_DATA: Readonly<Record<string, { path: string; key: string; items: readonly Item[] }>> = {
  docstore: {
    path: '/documents',
    key: 'documents',
    items: [
      { id: 'doc-1', title: 'Quarterly plan', owner: 'org-alice' },
      { id: 'doc-2', title: 'Gateway runbook', owner: 'org-alice' },
    ],
  },
  messaging: {
    path: '/messages',
    key: 'messages',
    items: [
      { id: 'msg-1', from: 'org-alice', to: 'agent-alpha', text: 'Please summarize the quarterly plan.' },
      { id: 'msg-2', from: 'org-alice', to: 'agent-alpha', text: 'The runbook is in docstore.' },
    ],
  },
};

export type MockResponse = { status: number; body: unknown; headers?: Record<string, string> };

/** Pure routing, so tests can check it without a socket. */
export function route(service: string, method: string, url: string): MockResponse {
  const path = new URL(url, 'https://mock.invalid').pathname.replace(/\/+$/, '') || '/';
  if (method !== 'GET' && method !== 'HEAD') {
    return { status: 405, body: { error: 'method not allowed', method }, headers: { allow: 'GET, HEAD' } };
  }
  if (path === '/health') return { status: 200, body: { status: 'ok', service } };
  const data = SERVICE_DATA[service];
  if (data !== undefined && path === data.path) {
    return { status: 200, body: { service, [data.key]: data.items } };
  }
  return { status: 404, body: { error: 'not found', service, path } };
}

function log(fields: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...fields })}\n`);
}

function parseListen(text: string): HostPort {
  const parsed = parseHostPort(text, { allowPortZero: true });
  if (!parsed.ok) throw new Error(`--listen must be host:port, got ${JSON.stringify(text)}`);
  return parsed.value;
}

function usage(message?: string): never {
  if (message) process.stderr.write(`mock-service: ${message}\n`);
  process.stderr.write(
    'usage: mock-service --name NAME --listen HOST:PORT --cert CERT.pem --key KEY.pem\n' +
      `  known names: ${Object.keys(SERVICE_DATA).join(', ')} (any other name serves /health only)\n`,
  );
  process.exit(2);
}

function main(): void {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      options: {
        name: { type: 'string' },
        listen: { type: 'string', default: '127.0.0.1:9441' },
        cert: { type: 'string' },
        key: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  if (values['help']) usage();
  const name = values['name'];
  const cert = values['cert'];
  const key = values['key'];
  if (typeof name !== 'string' || name === '') usage('--name is required');
  if (typeof cert !== 'string' || typeof key !== 'string') usage('--cert and --key are required');
  let listen: { host: string; port: number };
  let tls: { cert: Buffer; key: Buffer };
  try {
    listen = parseListen(String(values['listen']));
    tls = { cert: readFileSync(cert), key: readFileSync(key) };
  } catch (err) {
    usage((err as Error).message);
  }

  const server = https.createServer(
    { ...tls, minVersion: 'TLSv1.2' },
    (req: IncomingMessage, res: ServerResponse) => {
      const r = route(name, req.method ?? 'GET', req.url ?? '/');
      const body = `${JSON.stringify(r.body)}\n`;
      res.writeHead(r.status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        ...r.headers,
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      log({
        msg: 'request',
        service: name,
        method: req.method,
        path: req.url,
        status: r.status,
        peer: req.socket.remoteAddress,
      });
    },
  );
  server.on('tlsClientError', (err) => log({ msg: 'tls error', service: name, error: err.message }));
  server.once('error', (err) => {
    process.stderr.write(
      `mock-service ${name}: cannot listen on ${listen.host}:${listen.port}: ${err.message}\n`,
    );
    process.exit(1);
  });
  server.listen(listen.port, listen.host, () => {
    const a = server.address();
    const port = a !== null && typeof a === 'object' ? a.port : listen.port;
    log({ msg: 'listening', service: name, address: `${listen.host}:${port}` });
  });
  const stop = (signal: string) => {
    log({ msg: 'stopping', service: name, signal });
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

// Run only as a program (tests import `route`).
if (isMain(import.meta.url)) main();
