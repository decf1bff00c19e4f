/**
 * Peer certificate → identity, once per TLS session. Every stream on a connection shares the one
 * handshake, so parsing the certificate per CONNECT would redo identical work thousands of times on a
 * sidecar's long-lived connection.
 */
import type { Http2Session } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { type IdentityResult, readPeerIdentity } from '../core/identity-extension.js';

const bySession = new WeakMap<Http2Session, IdentityResult>();

/**
 * The identity proven by this session's handshake. No chain verification on purpose (SPEC §4): the
 * handshake proved possession of the leaf's key, and the registry names that exact key.
 */
export function sessionIdentity(session: Http2Session, oid: string): IdentityResult {
  const cached = bySession.get(session);
  if (cached !== undefined) return cached;
  const result = identityOfSocket(session.socket as TLSSocket, oid);
  bySession.set(session, result);
  return result;
}

export function identityOfSocket(socket: TLSSocket, oid: string): IdentityResult {
  let der: Buffer | undefined;
  try {
    // getPeerX509Certificate hands over the DER without building getPeerCertificate()'s object tree.
    der = socket.getPeerX509Certificate()?.raw;
  } catch {
    der = undefined;
  }
  return readPeerIdentity(der, oid);
}
