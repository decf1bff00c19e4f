// Which failed CONNECTs the sidecar retries (docs/contract.md "Sidecar"): only those the gateway cannot
// have processed (RFC 9113 §8.7). A real TLS HTTP/2 server on loopback stands in for the gateway and
// resets the CONNECT stream with a chosen code; the sidecar's GatewaySession must send the CONNECT again
// after REFUSED_STREAM and must not after INTERNAL_ERROR or ENHANCE_YOUR_CALM.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestCa } from '../../dev-support/pki.js';
import { GatewaySession, GatewayUnreachableError } from '../../sidecar/gateway-session.js';

describe('sidecar CONNECT retry', () => {
  let server: http2.Http2SecureServer;
  let port: number;
  let secureContext: tls.SecureContext;
  /** CONNECT streams the server saw, per authority. */
  const seen = new Map<string, number>();

  beforeAll(async () => {
    const ca = await createTestCa();
    const cert = await ca.serverCert();
    server = http2.createSecureServer({ cert: cert.certPem, key: cert.keyPem, allowHTTP1: false });
    server.on('stream', (stream, headers) => {
      stream.on('error', () => {}); // the reset below is reported on the server's side too
      const authority = String(headers[':authority']);
      const n = (seen.get(authority) ?? 0) + 1;
      seen.set(authority, n);
      // `<code>.test:443`: reset with that code the first time, answer 200 after.
      const code = Number(authority.split('.')[0]);
      if (n === 1) stream.close(code);
      else stream.respond({ ':status': 200 });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
    secureContext = tls.createSecureContext({ ca: ca.certPem });
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  const session = () =>
    new GatewaySession({
      gateways: [{ host: '127.0.0.1', port }],
      servername: undefined,
      secureContext,
      logger: pino({ level: 'silent' }),
    });

  it('REFUSED_STREAM: not processed, sent again and answered', async () => {
    const s = session();
    const authority = `${http2.constants.NGHTTP2_REFUSED_STREAM}.test:443`;
    const r = await s.connect(authority);
    expect(r.status).toBe(200);
    expect(seen.get(authority)).toBe(2);
    r.stream.close();
    s.destroy();
  });

  for (const name of ['NGHTTP2_INTERNAL_ERROR', 'NGHTTP2_ENHANCE_YOUR_CALM', 'NGHTTP2_CANCEL'] as const) {
    it(`${name}: may have been processed, the agent gets the failure and the gateway saw it once`, async () => {
      const s = session();
      const authority = `${http2.constants[name]}.test:443`;
      await expect(s.connect(authority)).rejects.toThrow(GatewayUnreachableError);
      expect(seen.get(authority)).toBe(1);
      s.destroy();
    });
  }
});
