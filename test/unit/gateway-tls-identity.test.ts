// Peer certificate → identity: the same results as core/identity-extension.ts, computed once per distinct
// certificate (sidecars reconnect with the same carrier certificate).
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { DEFAULT_IDENTITY_OID } from '../../core/identity-extension.js';
import { createCarrier } from '../../dev-support/pki.js';
import { identityOfSocket } from '../../gateway/tls-identity.js';

function socketWith(certPem: string | undefined): TLSSocket {
  const x509 = certPem === undefined ? undefined : new X509Certificate(certPem);
  return { getPeerX509Certificate: () => x509 } as unknown as TLSSocket;
}

describe('identityOfSocket', () => {
  it('reads identity and exact SPKI, and reuses the result for the same certificate', async () => {
    const carrier = await createCarrier('agent-alpha');
    const first = identityOfSocket(socketWith(carrier.certPem), DEFAULT_IDENTITY_OID);
    expect(first).toEqual({ ok: true, peer: { identity: 'agent-alpha', spkiDer: carrier.spkiDer } });
    expect(identityOfSocket(socketWith(carrier.certPem), DEFAULT_IDENTITY_OID)).toBe(first);
    // Another OID is another question about the same certificate.
    expect(identityOfSocket(socketWith(carrier.certPem), '1.2.3.4')).toMatchObject({
      ok: false,
      reason: 'missing_identity_extension',
    });
  });

  it('reports a missing certificate and identity failures', async () => {
    expect(identityOfSocket(socketWith(undefined), DEFAULT_IDENTITY_OID)).toMatchObject({
      ok: false,
      reason: 'missing_client_certificate',
    });
    const wrongType = await createCarrier('x', { extension: 'not_utf8string' });
    expect(identityOfSocket(socketWith(wrongType.certPem), DEFAULT_IDENTITY_OID)).toMatchObject({
      ok: false,
      reason: 'invalid_identity_extension',
    });
    const throwing = {
      getPeerX509Certificate: () => {
        throw new Error('socket gone');
      },
    } as unknown as TLSSocket;
    expect(identityOfSocket(throwing, DEFAULT_IDENTITY_OID)).toMatchObject({
      reason: 'missing_client_certificate',
    });
  });
});
