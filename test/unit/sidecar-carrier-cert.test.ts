// Carrier certificates (core/carrier-cert.ts): the subject key is exactly the given SPKI and the gateway's
// own reader (readPeerIdentity) finds the identity in them; a real TLS handshake with one presents both.
import { generateKeyPairSync } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { certificateSpki, createCarrierCertificate } from '../../core/carrier-cert.js';
import { DEFAULT_IDENTITY_OID, readPeerIdentity } from '../../core/identity-extension.js';
import { x509 } from '../../core/x509.js';

function p256() {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    spki: publicKey.export({ type: 'spki', format: 'der' }),
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

describe('carrier certificate', () => {
  it('carries the given public key and the identity as a non-critical UTF8String extension', async () => {
    const key = p256();
    const cert = await createCarrierCertificate({ subjectSpkiDer: key.spki, identity: 'agent-alpha' });
    expect(certificateSpki(cert.pem).equals(key.spki)).toBe(true);
    const parsed = new x509.X509Certificate(cert.pem);
    const ext = parsed.extensions.find((e) => e.type === DEFAULT_IDENTITY_OID);
    expect(ext?.critical).toBe(false);
    expect(Buffer.from(ext?.value ?? new ArrayBuffer(0)).toString('hex')).toBe(
      `0c0b${Buffer.from('agent-alpha').toString('hex')}`,
    );
    const peer = readPeerIdentity(cert.der, DEFAULT_IDENTITY_OID);
    expect(peer).toEqual({ ok: true, peer: { identity: 'agent-alpha', spkiDer: key.spki } });
    expect(parsed.notAfter.getTime() - parsed.notBefore.getTime()).toBe(365 * 86_400_000);
  });

  it('uses a fresh throwaway issuer every time', async () => {
    const key = p256();
    const a = new x509.X509Certificate(
      (await createCarrierCertificate({ subjectSpkiDer: key.spki, identity: 'a' })).pem,
    );
    const b = new x509.X509Certificate(
      (await createCarrierCertificate({ subjectSpkiDer: key.spki, identity: 'a' })).pem,
    );
    expect(a.serialNumber).not.toBe(b.serialNumber);
    expect(Buffer.from(a.signature).equals(Buffer.from(b.signature))).toBe(false);
  });

  it('keeps identities exact: case, non-ASCII, DN syntax, the longest value, another OID', async () => {
    const key = p256();
    for (const identity of ['Agent-Alpha', 'agent-ß-日本', 'cn=x,o=y+z "q"', 'a'.repeat(256)]) {
      const cert = await createCarrierCertificate({ subjectSpkiDer: key.spki, identity });
      const peer = readPeerIdentity(cert.der, DEFAULT_IDENTITY_OID);
      expect(peer.ok && peer.peer.identity, identity).toBe(identity);
    }
    const custom = await createCarrierCertificate({
      subjectSpkiDer: key.spki,
      identity: 'x',
      oid: '1.2.3.4.5',
    });
    expect(readPeerIdentity(custom.der, '1.2.3.4.5')).toMatchObject({ ok: true, peer: { identity: 'x' } });
    expect(readPeerIdentity(custom.der, DEFAULT_IDENTITY_OID)).toMatchObject({ ok: false });
  });

  it('refuses identities that cannot be granted and keys that are not P-256', async () => {
    const key = p256();
    await expect(createCarrierCertificate({ subjectSpkiDer: key.spki, identity: '' })).rejects.toThrow(
      /empty/,
    );
    await expect(createCarrierCertificate({ subjectSpkiDer: key.spki, identity: 'a\nb' })).rejects.toThrow(
      /control character/,
    );
    await expect(
      createCarrierCertificate({ subjectSpkiDer: key.spki, identity: 'a'.repeat(257) }),
    ).rejects.toThrow(/257 bytes, longer than 256/);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    await expect(createCarrierCertificate({ subjectSpkiDer: rsa, identity: 'a' })).rejects.toThrow(/P-256/);
    await expect(
      createCarrierCertificate({ subjectSpkiDer: key.spki, identity: 'a', oid: 'not-an-oid' }),
    ).rejects.toThrow(/OID/);
  });

  it('works as a TLS client certificate: the server reads identity and SPKI from the handshake', async () => {
    const key = p256();
    const server = p256();
    const cert = await createCarrierCertificate({ subjectSpkiDer: key.spki, identity: 'agent-tls' });
    const serverCert = await createCarrierCertificate({ subjectSpkiDer: server.spki, identity: 'server' });
    const seen = await new Promise<ReturnType<typeof readPeerIdentity>>((resolve, reject) => {
      const srv = tls.createServer(
        { key: server.keyPem, cert: serverCert.pem, requestCert: true, rejectUnauthorized: false },
        (socket) => {
          resolve(readPeerIdentity(socket.getPeerX509Certificate()?.raw, DEFAULT_IDENTITY_OID));
          socket.end();
          srv.close();
        },
      );
      srv.listen(0, '127.0.0.1', () => {
        const c = tls.connect({
          port: (srv.address() as AddressInfo).port,
          host: '127.0.0.1',
          key: key.keyPem,
          cert: cert.pem,
          rejectUnauthorized: false,
        });
        c.on('error', reject);
        c.resume();
      });
    });
    expect(seen).toEqual({ ok: true, peer: { identity: 'agent-tls', spkiDer: key.spki } });
  });
});
