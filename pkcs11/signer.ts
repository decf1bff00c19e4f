/**
 * ECDSA P-256 signing with a key that never leaves the TPM, through tpm2-pkcs11 (libtpm2_pkcs11.so)
 * and pkcs11js. The registry CLI signs permission rows with it; the demo reuses it.
 *
 * Everything goes through PKCS#11 itself, no tpm2_ptool: C_InitToken + C_InitPIN create a missing
 * token (tpm2-pkcs11 also creates the persistent primary key it needs), C_GenerateKeyPair
 * (CKM_EC_KEY_PAIR_GEN, P-256) creates a missing key with CKA_SENSITIVE=true, CKA_EXTRACTABLE=false.
 * Keys made by `tpm2_ptool addkey --algorithm=ecc256` are found the same way, by label.
 *
 * tpm2-pkcs11 reads its configuration from the environment at C_Initialize: TPM2_PKCS11_STORE (sqlite
 * store), TPM2_PKCS11_TCTI (how to reach the TPM). One PKCS#11 module instance exists per process
 * (a second C_Initialize fails with CKR_CRYPTOKI_ALREADY_INITIALIZED), so signers share it by
 * reference count; the last close() calls C_Finalize.
 */
import { createHash, createPublicKey, type KeyObject, randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import * as asn1js from 'asn1js';
import pkcs11js from 'pkcs11js';
import { p256PublicKey, rawToDer, verifyDerSignature } from './ecdsa.js';

export const DEFAULT_TOKEN_LABEL = 'agent-gateway';

/** Debian's tpm2-pkcs11 module for this machine's multiarch triplet. */
export const DEFAULT_MODULE_PATH = `/usr/lib/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu/pkcs11/libtpm2_pkcs11.so`;

const P256_OID = '1.2.840.10045.3.1.7';
// PKCS#11 token labels are 32 bytes, blank padded.
const TOKEN_LABEL_BYTES = 32;

export type SignerErrorKind =
  | 'config'
  | 'module_load'
  | 'tpm_unavailable'
  | 'token_not_found'
  | 'token_ambiguous'
  | 'token_create_failed'
  | 'pin_incorrect'
  | 'pin_locked'
  | 'key_not_found'
  | 'key_ambiguous'
  | 'key_unsupported'
  | 'sign_failed'
  | 'pkcs11';

export class SignerError extends Error {
  constructor(
    readonly kind: SignerErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SignerError';
  }
}

export type TokenOptions = {
  /** Path of the PKCS#11 module (env TPM2_PKCS11_MODULE). */
  readonly modulePath: string;
  /** tpm2-pkcs11 store directory (env TPM2_PKCS11_STORE). */
  readonly store: string;
  readonly tokenLabel: string;
};

export type SignerOptions = TokenOptions & {
  readonly keyLabel: string;
  readonly userPin: string;
  /** Only needed to create the token. */
  readonly soPin?: string | undefined;
  /** Create the store directory, token and key when missing (default: they must exist). */
  readonly create?: boolean;
};

export type Signer = {
  readonly tokenLabel: string;
  readonly keyLabel: string;
  /** SubjectPublicKeyInfo DER of the key. */
  readonly spkiDer: Buffer;
  /** What opening had to create. */
  readonly created: { readonly token: boolean; readonly key: boolean };
  /** ECDSA P-256 over SHA-256(message), DER encoded. */
  sign(message: Uint8Array): Buffer;
  /** Log out, close the session, C_Finalize when it was the last signer. Idempotent. */
  close(): void;
};

export type EnvLike = Readonly<Record<string, string | undefined>>;

/**
 * Signer options from the environment names of SPEC §7. Throws SignerError('config') naming the
 * missing variable. The SO PIN is optional here: it only matters when the token has to be created.
 */
export function signerOptionsFromEnv(keyLabel: string, env: EnvLike = process.env): SignerOptions {
  const store = nonEmpty(env['TPM2_PKCS11_STORE']);
  if (store === undefined) {
    throw new SignerError(
      'config',
      'TPM2_PKCS11_STORE is not set: it must name the tpm2-pkcs11 store directory that belongs to this TPM',
    );
  }
  const userPin = nonEmpty(env['AGENT_GATEWAY_TPM_USER_PIN']);
  if (userPin === undefined) {
    throw new SignerError(
      'config',
      'AGENT_GATEWAY_TPM_USER_PIN is not set: the token user PIN is needed to sign',
    );
  }
  return {
    modulePath: nonEmpty(env['TPM2_PKCS11_MODULE']) ?? DEFAULT_MODULE_PATH,
    store,
    tokenLabel: nonEmpty(env['AGENT_GATEWAY_TPM_TOKEN_LABEL']) ?? DEFAULT_TOKEN_LABEL,
    keyLabel,
    userPin,
    soPin: nonEmpty(env['AGENT_GATEWAY_TPM_SO_PIN']),
  };
}

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
export function readPublicKeySpki(opts: TokenOptions & { readonly keyLabel: string }): Buffer {
  validateLabels(opts);
  const mod = acquireModule(opts, false);
  const { lib } = mod;
  let session: pkcs11js.Handle | undefined;
  try {
    const slot = findToken(lib, opts);
    if (slot === undefined) throw tokenNotFound(opts);
    session = openSession(lib, slot, false);
    const publics = findObjects(lib, session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      { type: pkcs11js.CKA_LABEL, value: opts.keyLabel },
    ]);
    if (publics.length === 0) {
      throw new SignerError(
        'key_not_found',
        `no public key labelled ${JSON.stringify(opts.keyLabel)} in token ${JSON.stringify(opts.tokenLabel)}`,
      );
    }
    if (publics.length > 1) throw keyAmbiguous(opts, publics.length);
    return spkiFromObject(lib, session, publics[0]!, opts.keyLabel);
  } finally {
    if (session !== undefined) closeSession(mod, session, undefined);
    releaseModule(mod);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Module lifetime

type LoadedModule = {
  readonly lib: pkcs11js.PKCS11;
  readonly modulePath: string;
  readonly store: string;
  refs: number;
  /**
   * PKCS#11 login state belongs to the token and the whole application, not to a session: a second
   * signer on the same token finds it logged in already (its C_Login would not check its PIN), and one
   * signer's C_Logout would log out the other. So logins are counted per token, and a second signer
   * must present the PIN the token was unlocked with.
   */
  readonly logins: Map<string, { pinHash: Buffer; sessions: number }>;
};

let loaded: LoadedModule | undefined;

function acquireModule(opts: TokenOptions, create: boolean): LoadedModule {
  if (loaded !== undefined) {
    if (loaded.modulePath !== opts.modulePath || loaded.store !== opts.store) {
      throw new SignerError(
        'config',
        `PKCS#11 module ${loaded.modulePath} with store ${loaded.store} is already open in this process; ` +
          'one process can use only one module and store at a time',
      );
    }
    loaded.refs++;
    return loaded;
  }
  if (!existsSync(opts.store)) {
    if (!create) {
      throw new SignerError(
        'token_not_found',
        `tpm2-pkcs11 store ${opts.store} (TPM2_PKCS11_STORE) does not exist: no token has been created there`,
      );
    }
    mkdirSync(opts.store, { recursive: true, mode: 0o700 });
  }
  // The store location reaches tpm2-pkcs11 only through the environment, read at C_Initialize.
  process.env['TPM2_PKCS11_STORE'] = opts.store;
  // The TSS (ESYS, SYS, TCTI) logs every failed TPM command to stderr; callers get one SignerError naming
  // the problem instead, so its logging is off unless TSS2_LOG is set. tpm2-pkcs11's own log has no level
  // below "error" (TPM2_PKCS11_LOG_LEVEL=0, its default): its ERROR lines, e.g. "ERROR: Esys_Unseal: ...
  // DA counter incremented" on a wrong PIN, always reach stderr; from Node they cannot be redirected.
  process.env['TSS2_LOG'] ??= 'all+none';
  process.env['TPM2_PKCS11_LOG_LEVEL'] ??= '0';

  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(opts.modulePath);
  } catch (err) {
    throw new SignerError(
      'module_load',
      `cannot load PKCS#11 module ${opts.modulePath} (TPM2_PKCS11_MODULE): ${errorMessage(err)}`,
      { cause: err },
    );
  }
  try {
    lib.C_Initialize();
  } catch (err) {
    lib.close();
    throw new SignerError(
      'tpm_unavailable',
      `tpm2-pkcs11 failed to initialise (${errorMessage(err)}): is the TPM reachable ` +
        `(TPM2_PKCS11_TCTI=${process.env['TPM2_PKCS11_TCTI'] ?? '<default>'}) and the store ${opts.store} ` +
        'readable? Set TSS2_LOG=all+error for the TPM library diagnostics',
      { cause: err },
    );
  }
  loaded = { lib, modulePath: opts.modulePath, store: opts.store, refs: 1, logins: new Map() };
  return loaded;
}

function releaseModule(mod: LoadedModule): void {
  mod.refs--;
  if (mod.refs > 0) return;
  if (loaded === mod) loaded = undefined;
  // Release runs on error paths and from close() in finally blocks: it must not replace the error that
  // got us here, and a failing C_Finalize leaves nothing for the caller to do.
  try {
    mod.lib.C_Finalize();
  } catch {
    // the module is unloaded below either way
  }
  try {
    mod.lib.close();
  } catch {
    // already unloaded
  }
}

// ---------------------------------------------------------------------------------------------------------
// Tokens, sessions, keys

function findToken(lib: pkcs11js.PKCS11, opts: TokenOptions): pkcs11js.Handle | undefined {
  const matching = pkcs11(`list tokens in ${opts.store}`, () =>
    lib.C_GetSlotList(true).filter((slot) => {
      const info = lib.C_GetTokenInfo(slot);
      return (info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) !== 0 && trimLabel(info.label) === opts.tokenLabel;
    }),
  );
  if (matching.length > 1) {
    throw new SignerError(
      'token_ambiguous',
      `${matching.length} tokens are labelled ${JSON.stringify(opts.tokenLabel)} in ${opts.store}`,
    );
  }
  return matching[0];
}

function createToken(lib: pkcs11js.PKCS11, label: string, soPin: string, userPin: string): pkcs11js.Handle {
  // tpm2-pkcs11 always offers one uninitialised slot for a new token.
  const free = pkcs11('list slots', () =>
    lib
      .C_GetSlotList(true)
      .find((slot) => (lib.C_GetTokenInfo(slot).flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0),
  );
  if (free === undefined) {
    throw new SignerError('token_create_failed', `no free slot to create token ${JSON.stringify(label)}`);
  }
  try {
    lib.C_InitToken(free, soPin, label.padEnd(TOKEN_LABEL_BYTES, ' '));
    const session = lib.C_OpenSession(free, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
    try {
      lib.C_Login(session, pkcs11js.CKU_SO, soPin);
      lib.C_InitPIN(session, userPin);
      lib.C_Logout(session);
    } finally {
      lib.C_CloseSession(session);
    }
  } catch (err) {
    throw new SignerError(
      'token_create_failed',
      `cannot create token ${JSON.stringify(label)}: ${errorMessage(err)}`,
      { cause: err },
    );
  }
  return free;
}

function openSession(lib: pkcs11js.PKCS11, slot: pkcs11js.Handle, readWrite: boolean): pkcs11js.Handle {
  const flags = pkcs11js.CKF_SERIAL_SESSION | (readWrite ? pkcs11js.CKF_RW_SESSION : 0);
  return pkcs11('open session', () => lib.C_OpenSession(slot, flags));
}

function closeSession(mod: LoadedModule, session: pkcs11js.Handle, loginKey: string | undefined): void {
  const login = loginKey === undefined ? undefined : mod.logins.get(loginKey);
  if (login !== undefined && --login.sessions === 0) {
    mod.logins.delete(loginKey!);
    try {
      mod.lib.C_Logout(session);
    } catch {
      // closing the token's last session logs out anyway
    }
  }
  try {
    mod.lib.C_CloseSession(session);
  } catch {
    // C_Finalize, which always follows, closes whatever is left
  }
}

/** Log the user in (or join the existing login of this token); returns the key to leave it with. */
function login(
  mod: LoadedModule,
  slot: pkcs11js.Handle,
  session: pkcs11js.Handle,
  opts: SignerOptions,
): string {
  const key = slot.toString('hex');
  const pinHash = createHash('sha256').update(opts.userPin, 'utf8').digest();
  const token = JSON.stringify(opts.tokenLabel);
  const wrongPin = (detail: string, cause?: unknown) =>
    new SignerError(
      'pin_incorrect',
      `wrong user PIN for token ${token} (AGENT_GATEWAY_TPM_USER_PIN)${detail}`,
      {
        cause,
      },
    );
  const existing = mod.logins.get(key);
  if (existing !== undefined) {
    // Compared here, in this process: the TPM never saw this PIN.
    if (!timingSafeEqual(existing.pinHash, pinHash)) throw wrongPin('');
    existing.sessions++;
    return key;
  }
  try {
    mod.lib.C_Login(session, pkcs11js.CKU_USER, opts.userPin);
  } catch (err) {
    const code = errorCode(err);
    if (code === 'CKR_PIN_INCORRECT') {
      // tpm2-pkcs11 checks the PIN by unsealing the token's wrapping key with it: the TPM rejected the
      // authorization, which counts as a failure against its dictionary-attack protection.
      throw wrongPin(
        "; the TPM's dictionary-attack counter was incremented: repeated wrong PINs lock the key " +
          '(TPM lockout), so check the PIN before retrying',
        err,
      );
    }
    if (code === 'CKR_PIN_LEN_RANGE' || code === 'CKR_PIN_INVALID') {
      throw wrongPin(` (${code})`, err);
    }
    if (code === 'CKR_PIN_LOCKED') {
      throw new SignerError('pin_locked', `user PIN of token ${token} is locked`, { cause: err });
    }
    throw new SignerError('pkcs11', `login to token ${token} failed: ${errorMessage(err)}`, { cause: err });
  }
  mod.logins.set(key, { pinHash, sessions: 1 });
  return key;
}

function findObjects(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  template: pkcs11js.Template,
): pkcs11js.Handle[] {
  return pkcs11('find objects', () => {
    lib.C_FindObjectsInit(session, template);
    try {
      return lib.C_FindObjects(session, 16);
    } finally {
      lib.C_FindObjectsFinal(session);
    }
  });
}

function findPrivateKey(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  opts: SignerOptions,
): pkcs11js.Handle | undefined {
  const keys = findObjects(lib, session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_LABEL, value: opts.keyLabel },
  ]);
  if (keys.length > 1) throw keyAmbiguous(opts, keys.length);
  const key = keys[0];
  if (key === undefined) return undefined;
  const [type] = pkcs11('read key type', () =>
    lib.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_KEY_TYPE }]),
  );
  if (type === undefined || readUlong(type.value) !== pkcs11js.CKK_EC) {
    throw new SignerError('key_unsupported', `key ${JSON.stringify(opts.keyLabel)} is not an EC key`);
  }
  return key;
}

function generateKey(lib: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string): pkcs11js.Handle {
  const ecParams = Buffer.from(new asn1js.ObjectIdentifier({ value: P256_OID }).toBER(false));
  const id = randomBytes(16);
  const { privateKey } = pkcs11(`generate P-256 key ${JSON.stringify(label)}`, () =>
    lib.C_GenerateKeyPair(
      session,
      { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_VERIFY, value: true },
        { type: pkcs11js.CKA_EC_PARAMS, value: ecParams },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_ID, value: id },
      ],
      [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
        { type: pkcs11js.CKA_SIGN, value: true },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_ID, value: id },
      ],
    ),
  );
  return privateKey;
}

/** SPKI from the key's public object (same label and CKA_ID), else from the private object, which
 *  tpm2-pkcs11 also gives CKA_EC_POINT. */
function publicKeySpki(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  privateKey: pkcs11js.Handle,
  opts: SignerOptions,
): Buffer {
  const [idAttr] = pkcs11('read key id', () =>
    lib.C_GetAttributeValue(session, privateKey, [{ type: pkcs11js.CKA_ID }]),
  );
  const template: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_LABEL, value: opts.keyLabel },
  ];
  if (idAttr !== undefined && idAttr.value.length > 0)
    template.push({ type: pkcs11js.CKA_ID, value: idAttr.value });
  const publics = findObjects(lib, session, template);
  if (publics.length > 1) throw keyAmbiguous(opts, publics.length);
  return spkiFromObject(lib, session, publics[0] ?? privateKey, opts.keyLabel);
}

function spkiFromObject(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  object: pkcs11js.Handle,
  label: string,
): Buffer {
  const attrs = pkcs11(`read public point of ${JSON.stringify(label)}`, () =>
    lib.C_GetAttributeValue(session, object, [
      { type: pkcs11js.CKA_EC_PARAMS },
      { type: pkcs11js.CKA_EC_POINT },
    ]),
  );
  const params = attrs.find((a) => a.type === pkcs11js.CKA_EC_PARAMS)?.value;
  const point = attrs.find((a) => a.type === pkcs11js.CKA_EC_POINT)?.value;
  if (params === undefined || point === undefined) {
    throw new SignerError('key_unsupported', `key ${JSON.stringify(label)} has no EC parameters or point`);
  }
  return ecPointToSpki(params, point, label);
}

/** CKA_EC_PARAMS (OID) + CKA_EC_POINT (DER OCTET STRING around the uncompressed point) → SPKI DER. */
export function ecPointToSpki(ecParams: Uint8Array, ecPoint: Uint8Array, label = 'key'): Buffer {
  const unsupported = (why: string) =>
    new SignerError('key_unsupported', `key ${JSON.stringify(label)}: ${why}`);
  const oid = asn1js.fromBER(toArrayView(ecParams));
  if (
    oid.offset !== ecParams.length ||
    !(oid.result instanceof asn1js.ObjectIdentifier) ||
    oid.result.getValue() !== P256_OID
  ) {
    throw unsupported('not a P-256 key (CKA_EC_PARAMS is not the prime256v1 OID)');
  }
  const octets = asn1js.fromBER(toArrayView(ecPoint));
  if (octets.offset !== ecPoint.length || !(octets.result instanceof asn1js.OctetString)) {
    throw unsupported('CKA_EC_POINT is not a DER OCTET STRING');
  }
  const raw = Buffer.from(octets.result.valueBlock.valueHexView);
  if (raw.length !== 65 || raw[0] !== 0x04)
    throw unsupported('public point is not an uncompressed P-256 point');
  try {
    // createPublicKey checks that the point is on the curve.
    return createPublicKey({
      key: {
        kty: 'EC',
        crv: 'P-256',
        x: raw.subarray(1, 33).toString('base64url'),
        y: raw.subarray(33, 65).toString('base64url'),
      },
      format: 'jwk',
    }).export({ type: 'spki', format: 'der' });
  } catch (err) {
    throw unsupported(`public point rejected: ${errorMessage(err)}`);
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
  return {
    tokenLabel: opts.tokenLabel,
    keyLabel: opts.keyLabel,
    spkiDer,
    created,
    sign(message: Uint8Array): Buffer {
      if (!open) throw new SignerError('sign_failed', 'signer is closed');
      const digest = createHash('sha256').update(message).digest();
      const raw = pkcs11(`sign with key ${JSON.stringify(opts.keyLabel)}`, () => {
        lib.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, key);
        return lib.C_Sign(session, digest, Buffer.alloc(132));
      });
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
    },
    close(): void {
      if (!open) return;
      open = false;
      try {
        closeSession(mod, session, loginKey);
      } finally {
        releaseModule(mod);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

function validateLabels(opts: TokenOptions & { readonly keyLabel: string }): void {
  if (opts.tokenLabel === '' || Buffer.byteLength(opts.tokenLabel, 'utf8') > TOKEN_LABEL_BYTES) {
    throw new SignerError('config', `token label ${JSON.stringify(opts.tokenLabel)} must be 1..32 bytes`);
  }
  if (opts.tokenLabel !== opts.tokenLabel.trim()) {
    throw new SignerError('config', `token label ${JSON.stringify(opts.tokenLabel)} has surrounding blanks`);
  }
  if (opts.keyLabel === '') throw new SignerError('config', 'key label is empty');
  if (/\p{Cc}/u.test(opts.keyLabel)) {
    throw new SignerError(
      'config',
      `key label ${JSON.stringify(opts.keyLabel)} contains a control character`,
    );
  }
}

function tokenNotFound(opts: TokenOptions): SignerError {
  return new SignerError(
    'token_not_found',
    `token ${JSON.stringify(opts.tokenLabel)} not found in tpm2-pkcs11 store ${opts.store} ` +
      '(AGENT_GATEWAY_TPM_TOKEN_LABEL, TPM2_PKCS11_STORE)',
  );
}

function keyAmbiguous(opts: TokenOptions & { readonly keyLabel: string }, n: number): SignerError {
  return new SignerError(
    'key_ambiguous',
    `${n} keys are labelled ${JSON.stringify(opts.keyLabel)} in token ${JSON.stringify(opts.tokenLabel)}`,
  );
}

/** Run a PKCS#11 call, turning a Cryptoki error into a SignerError that says what was attempted. */
function pkcs11<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof SignerError) throw err;
    throw new SignerError('pkcs11', `${what}: ${errorMessage(err)}`, { cause: err });
  }
}

function errorCode(err: unknown): string | undefined {
  if (err instanceof pkcs11js.Pkcs11Error) return err.message;
  return undefined;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function trimLabel(label: string): string {
  return label.replace(/[\s\u0000]+$/, '');
}

function readUlong(value: Buffer): number {
  return value.length === 8 ? Number(value.readBigUInt64LE(0)) : value.readUInt32LE(0);
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

function toArrayView(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
