/**
 * Peer certificate → identity, once per TLS session, and at most once per distinct certificate while it
 * stays in a small cache. Every stream on a connection shares the one handshake, and sidecars reconnect
 * with the same carrier certificate, so parsing per CONNECT, or even per connection, would redo identical
 * work; a full X.509 parse costs several times a handshake's own CPU.
 */
import { createHash } from 'node:crypto';
import type { Http2Session } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { type IdentityResult, readPeerIdentity } from '../core/identity-extension.js';

const bySession = new WeakMap<Http2Session, IdentityResult>();

const CACHE_MAX_ENTRIES = 4096;
// Key: OID + SHA-256 of the certificate DER. Map order doubles as LRU order.
const byCertificate = new Map<string, IdentityResult>();

/**
 * The identity proven by this session's handshake. No chain verification on purpose (docs/contract.md
 * "Identity"): the handshake proved possession of the leaf's key, and the registry names that exact key.
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
  if (der === undefined || der.length === 0) return readPeerIdentity(der, oid);
  const key = `${oid} ${createHash('sha256').update(der).digest('base64')}`;
  const hit = byCertificate.get(key);
  if (hit !== undefined) {
    byCertificate.delete(key);
    byCertificate.set(key, hit);
    return hit;
  }
  const result = readPeerIdentity(der, oid);
  byCertificate.set(key, result);
  if (byCertificate.size > CACHE_MAX_ENTRIES) {
    const oldest = byCertificate.keys().next();
    if (!oldest.done) byCertificate.delete(oldest.value);
  }
  return result;
}
