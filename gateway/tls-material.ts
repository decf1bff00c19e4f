/**
 * The gateway's own TLS certificate and key, read and checked together, at start and on SIGHUP.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { errorText } from '../core/error-text.js';

export type TlsMaterial = {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly subject: string;
  readonly notAfter: string;
  readonly fingerprint256: string;
};

/**
 * Read and check a certificate and its key: both parse and the key belongs to the certificate. Throws
 * with a message naming the file, so a bad reload can be logged and the old material kept.
 */
export function loadTlsMaterial(certPath: string, keyPath: string): TlsMaterial {
  const read = (path: string, what: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`cannot read ${what} ${path}: ${errorText(err)}`);
    }
  };
  const cert = read(certPath, 'TLS certificate');
  const key = read(keyPath, 'TLS key');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new Error(`TLS certificate ${certPath} does not parse: ${errorText(err)}`);
  }
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new Error(`TLS key ${keyPath} does not parse: ${errorText(err)}`);
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new Error(`TLS key ${keyPath} does not belong to the certificate ${certPath}`);
  }
  return { cert, key, subject: x509.subject, notAfter: x509.validTo, fingerprint256: x509.fingerprint256 };
}
