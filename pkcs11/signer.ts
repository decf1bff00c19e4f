/**
 * ECDSA P-256 signing with a key that never leaves the TPM, through tpm2-pkcs11 (libtpm2_pkcs11.so)
 * and pkcs11js. The registry CLI signs permission rows with it.
 *
 * Everything goes through PKCS#11 itself, no tpm2_ptool: a missing token or key is created on request
 * (token-session.ts, key-objects.ts). The module is loaded once per process (loaded-module.ts); a signer
 * holds one session and a share of its token's login until close().
 */
import { createHash, type KeyObject } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { p256PublicKey, rawToDer, verifyDerSignature } from '../core/ecdsa.js';
import { errorText } from '../core/error-text.js';
import { findPrivateKey, generateKey, publicKeySpki, publicObjectSpki } from './key-objects.js';
import { acquireModule, type LoadedModule, releaseModule } from './loaded-module.js';
import { pkcs11Call, SignerError } from './signer-error.js';
import { type KeyOptions, type SignerOptions, validateLabels } from './signer-options.js';
import { closeSession, createToken, findToken, login, openSession, tokenNotFound } from './token-session.js';

export type Signer = {
  readonly tokenLabel: string;
  readonly keyLabel: string;
  /** SubjectPublicKeyInfo DER of the key. */
  readonly spkiDer: Buffer;
  /** What opening had to create. */
  readonly created: { readonly token: boolean; readonly key: boolean };
  /** ECDSA P-256 over SHA-256(message), DER encoded. Blocks the thread for the token's time. */
  sign(message: Uint8Array): Buffer;
  /**
   * The same signature with C_Sign on libuv's thread pool: a TPM takes milliseconds, which a server's
   * event loop must not wait out. One at a time per signer (a session runs one operation at a time).
   */
  signAsync(message: Uint8Array): Promise<Buffer>;
  /**
   * Log out, close the session, C_Finalize when it was the last signer. Idempotent. Signatures asked for
   * afterwards, and queued ones not yet started, fail; a C_Sign already on the pool is waited for: the
   * session is closed when it returns (closing it under a running C_Sign is undefined behaviour).
   */
  close(): void;
};

/** Open the token, log in, find (or with `create`, make) the key. Close the result when done. */
export function openSigner(opts: SignerOptions): Signer {
  validateLabels(opts);
  const mod = acquireModule(opts, opts.create === true);
  const { lib } = mod;
  let session: pkcs11js.Handle | undefined;
  let loginKey: string | undefined;
  try {
    let tokenCreated = false;
    let slot = findToken(lib, opts);
    if (slot === undefined) {
      if (opts.create !== true) throw tokenNotFound(opts);
      if (opts.soPin === undefined || opts.soPin === '') {
        throw new SignerError(
          'config',
          `token ${JSON.stringify(opts.tokenLabel)} does not exist in ${opts.store}; ` +
            'AGENT_GATEWAY_TPM_SO_PIN is needed to create it',
        );
      }
      slot = createToken(lib, opts.tokenLabel, opts.soPin, opts.userPin);
      tokenCreated = true;
    }
    session = openSession(lib, slot, opts.create === true);
    loginKey = login(mod, slot, session, opts);
    let keyCreated = false;
    let key = findPrivateKey(lib, session, opts);
    if (key === undefined) {
      if (opts.create !== true) {
        throw new SignerError(
          'key_not_found',
          `no private key labelled ${JSON.stringify(opts.keyLabel)} in token ${JSON.stringify(opts.tokenLabel)}`,
        );
      }
      key = generateKey(lib, session, opts.keyLabel);
      keyCreated = true;
    }
    const spkiDer = publicKeySpki(lib, session, key, opts);
    const publicKey = p256PublicKey(spkiDer);
    return makeSigner(mod, session, loginKey, key, spkiDer, publicKey, opts, {
      token: tokenCreated,
      key: keyCreated,
    });
  } catch (err) {
    if (session !== undefined) closeSession(mod, session, loginKey);
    releaseModule(mod);
    throw err;
  }
}

/** Run `fn` with an open signer, closing it afterwards whatever happens. */
export async function withSigner<T>(opts: SignerOptions, fn: (signer: Signer) => T | Promise<T>): Promise<T> {
  const signer = openSigner(opts);
  try {
    return await fn(signer);
  } finally {
    signer.close();
  }
}

/**
 * The key's SPKI when the token and the key exist, without creating anything: a caller that must not
 * make a new key (KEY_ID is already registered with a public key) looks first. Logs in like openSigner,
 * so a wrong PIN is reported the same way. `missing` says which of token (or its store) and key is absent.
 */
export function findKey(
  opts: Omit<SignerOptions, 'create'>,
): { readonly spkiDer: Buffer } | { readonly missing: 'token' | 'key' } {
  let signer: Signer;
  try {
    signer = openSigner({ ...opts, create: false });
  } catch (err) {
    if (err instanceof SignerError && err.kind === 'token_not_found') return { missing: 'token' };
    if (err instanceof SignerError && err.kind === 'key_not_found') return { missing: 'key' };
    throw err;
  }
  try {
    return { spkiDer: signer.spkiDer };
  } finally {
    signer.close();
  }
}

/** Create token and key when missing; returns the key's SPKI and what was created. */
export function ensureKey(opts: Omit<SignerOptions, 'create'>): {
  spkiDer: Buffer;
  created: { token: boolean; key: boolean };
} {
  const signer = openSigner({ ...opts, create: true });
  try {
    return { spkiDer: signer.spkiDer, created: signer.created };
  } finally {
    signer.close();
  }
}

/** SPKI of the key labelled `keyLabel`, read from its public object: no PIN needed. */
export function readPublicKeySpki(opts: KeyOptions): Buffer {
  validateLabels(opts);
  const mod = acquireModule(opts, false);
  let session: pkcs11js.Handle | undefined;
  try {
    const slot = findToken(mod.lib, opts);
    if (slot === undefined) throw tokenNotFound(opts);
    session = openSession(mod.lib, slot, false);
    return publicObjectSpki(mod.lib, session, opts);
  } finally {
    if (session !== undefined) closeSession(mod, session, undefined);
    releaseModule(mod);
  }
}

function makeSigner(
  mod: LoadedModule,
  session: pkcs11js.Handle,
  loginKey: string,
  key: pkcs11js.Handle,
  spkiDer: Buffer,
  publicKey: KeyObject,
  opts: SignerOptions,
  created: { token: boolean; key: boolean },
): Signer {
  const { lib } = mod;
  let open = true;
  const signing = `sign with key ${JSON.stringify(opts.keyLabel)}`;
  let signQueue: Promise<void> = Promise.resolve();
  /** A C_Sign on libuv's pool: close() leaves the session to its completion. */
  let inFlight = false;
  const release = () => {
    try {
      closeSession(mod, session, loginKey);
    } finally {
      releaseModule(mod);
    }
  };
  const checked = (message: Uint8Array, raw: Buffer): Buffer => {
    const der = rawToDer(raw);
    // A public object that does not belong to the private key would make every signature useless
    // to the gateway; catch that here rather than after the row is written.
    if (!verifyDerSignature(publicKey, message, der)) {
      throw new SignerError(
        'sign_failed',
        `signature by key ${JSON.stringify(opts.keyLabel)} does not verify with its public key`,
      );
    }
    return der;
  };
  return {
    tokenLabel: opts.tokenLabel,
    keyLabel: opts.keyLabel,
    spkiDer,
    created,
    sign(message: Uint8Array): Buffer {
      if (!open) throw new SignerError('sign_failed', 'signer is closed');
      const digest = createHash('sha256').update(message).digest();
      const raw = pkcs11Call(signing, () => {
        lib.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key);
        return lib.C_Sign(session, digest, Buffer.alloc(132));
      });
      return checked(message, raw);
    },
    signAsync(message: Uint8Array): Promise<Buffer> {
      const run = async (): Promise<Buffer> => {
        if (!open) throw new SignerError('sign_failed', 'signer is closed');
        const digest = createHash('sha256').update(message).digest();
        pkcs11Call(signing, () => lib.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key));
        const raw = await new Promise<Buffer>((resolve, reject) => {
          const done = (err: Error | null, data?: Buffer) => {
            inFlight = false;
            // close() came while C_Sign ran: the session is ours to close now.
            if (!open) {
              try {
                release();
              } catch {}
            }
            if (err) reject(new SignerError('pkcs11', `${signing}: ${errorText(err)}`, { cause: err }));
            else resolve(data as Buffer);
          };
          inFlight = true;
          try {
            lib.C_Sign(session, digest, Buffer.alloc(132), done);
          } catch (err) {
            done(err as Error);
          }
        });
        return checked(message, raw);
      };
      const result = signQueue.then(run, run);
      signQueue = result.then(
        () => undefined,
        () => undefined,
      );
      return result;
    },
    close(): void {
      if (!open) return;
      open = false;
      if (!inFlight) release();
    },
  };
}
