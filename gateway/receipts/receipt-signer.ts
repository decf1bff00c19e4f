/**
 * The gateway's receipt key (docs/contract.md "Receipts"): a PEM EC P-256 private key file, or a key
 * in a PKCS#11 token (`pkcs11:token=<label>;object=<key label>`, found and logged into with the same
 * environment variables as the registry CLI: TPM2_PKCS11_STORE, AGENT_GATEWAY_TPM_USER_PIN,
 * TPM2_PKCS11_MODULE). Signing is asynchronous either way, so a TPM's milliseconds never stall tunnels.
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { p256PublicKey } from '../../core/ecdsa.js';
import { errorText } from '../../core/error-text.js';
import type { EnvLike } from '../../pkcs11/signer-options.js';

export type ReceiptSigner = {
  /** Lowercase hex SHA-256 of the key's SPKI DER (a checkpoint's key_id). */
  readonly keyId: string;
  readonly spkiDer: Buffer;
  /** ECDSA P-256 over SHA-256(message), DER, base64. */
  sign(message: Buffer): Promise<string>;
  close(): void;
};

/** The key cannot be used; the message names receipts.signing_key and why. */
export class ReceiptKeyError extends Error {
  constructor(signingKey: string, why: string) {
    super(`receipts.signing_key ${JSON.stringify(signingKey)}: ${why}`);
    this.name = 'ReceiptKeyError';
  }
}

export async function openReceiptSigner(
  signingKey: string,
  env: EnvLike = process.env,
): Promise<ReceiptSigner> {
  if (signingKey.startsWith('pkcs11:')) return openPkcs11(signingKey, env);
  return openPem(signingKey);
}

export function keyIdOf(spkiDer: Buffer): string {
  return createHash('sha256').update(spkiDer).digest('hex');
}

function openPem(file: string): ReceiptSigner {
  let key: KeyObject;
  try {
    key = createPrivateKey(readFileSync(file));
  } catch (err) {
    throw new ReceiptKeyError(file, `cannot load a private key: ${errorText(err)}`);
  }
  const spkiDer = createPublicKey(key).export({ type: 'spki', format: 'der' });
  try {
    p256PublicKey(spkiDer);
  } catch (err) {
    throw new ReceiptKeyError(file, errorText(err));
  }
  return {
    keyId: keyIdOf(spkiDer),
    spkiDer,
    sign: (message) =>
      new Promise((resolve, reject) => {
        sign('sha256', message, { key, dsaEncoding: 'der' }, (err, signature) => {
          if (err) reject(err);
          else resolve(signature.toString('base64'));
        });
      }),
    close() {},
  };
}

async function openPkcs11(uri: string, env: EnvLike): Promise<ReceiptSigner> {
  const { token, object } = parsePkcs11Uri(uri);
  // Loaded only for a pkcs11: key: a PEM-keyed gateway never loads the native module.
  const [{ openSigner }, { signerOptionsFromEnv }] = await Promise.all([
    import('../../pkcs11/signer.js'),
    import('../../pkcs11/signer-options.js'),
  ]);
  try {
    const signer = openSigner({ ...signerOptionsFromEnv(object, env), tokenLabel: token, create: false });
    return {
      keyId: keyIdOf(signer.spkiDer),
      spkiDer: signer.spkiDer,
      sign: async (message) => (await signer.signAsync(message)).toString('base64'),
      close: () => signer.close(),
    };
  } catch (err) {
    throw new ReceiptKeyError(uri, errorText(err));
  }
}

/**
 * RFC 7512 `pkcs11:` with the path attributes token and object (percent-encoded as the RFC allows);
 * anything else is refused, so a URI that means more than we read is never half-understood.
 */
export function parsePkcs11Uri(uri: string): { token: string; object: string } {
  const body = uri.slice('pkcs11:'.length);
  if (body.includes('?')) throw new ReceiptKeyError(uri, 'query attributes (such as pin-value) are not read');
  const attrs = new Map<string, string>();
  for (const part of body.split(';')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq);
    let value: string;
    try {
      value = decodeURIComponent(eq < 0 ? '' : part.slice(eq + 1));
    } catch {
      throw new ReceiptKeyError(uri, `attribute ${name} is not valid percent-encoding`);
    }
    if (name !== 'token' && name !== 'object' && name !== 'type')
      throw new ReceiptKeyError(uri, `unknown attribute ${JSON.stringify(name)} (token, object)`);
    if (name === 'type' && value !== 'private')
      throw new ReceiptKeyError(uri, 'type must be private when given');
    if (attrs.has(name)) throw new ReceiptKeyError(uri, `attribute ${name} is given twice`);
    attrs.set(name, value);
  }
  const token = attrs.get('token');
  const object = attrs.get('object');
  if (token === undefined || token === '' || object === undefined || object === '')
    throw new ReceiptKeyError(uri, 'must name token=<label>;object=<key label>');
  return { token, object };
}
