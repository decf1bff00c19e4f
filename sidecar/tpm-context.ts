/**
 * The one module that touches the OpenSSL engine: it builds the TLS SecureContext whose private key is the
 * TPM key, reached through the libp11 "pkcs11" engine over tpm2-pkcs11: the route that works from Node (the
 * tpm2-openssl provider's key parses, but Node imports it into the default provider and the handshake fails
 * with "missing private key"; making that provider the default hangs Node at start). The private key never
 * enters this process; every handshake asks the TPM for one signature.
 *
 * Engines are deprecated in OpenSSL 3 (and `privateKeyEngine` is DEP0183 in Node), so everything that
 * depends on them stays behind createTpmSecureContext; a provider-based route can replace this file alone.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { errorText } from '../core/error-text.js';
import { formatHandle } from './tpm-tools.js';

export type TpmKeyConfig = {
  /** TSS2 TCTI string, e.g. `swtpm:host=127.0.0.1,port=2321`, `tabrmd:bus_type=session`, `device:/dev/tpmrm0`. */
  readonly tcti: string;
  /** Persistent handle of the key (0x81000000..0x81ffffff). */
  readonly keyHandle: number;
  /** tpm2-pkcs11 store directory; undefined lets tpm2-pkcs11 search its defaults. */
  readonly store: string | undefined;
  /** Token label in the store. */
  readonly token: string;
  /** Label of the PKCS#11 key object linked to the handle's key. */
  readonly keyLabel: string;
  /** File holding the token's user PIN (mode 0600). */
  readonly pinFile: string;
  /** libtpm2_pkcs11.so; undefined = $PKCS11_MODULE_PATH or the distribution's path. */
  readonly modulePath: string | undefined;
};

export type TpmFailureKind =
  | 'pin_incorrect'
  | 'key_not_in_token'
  | 'certificate_key_mismatch'
  | 'pin_file_unreadable'
  | 'engine_missing'
  | 'tpm_unavailable';

export class TpmContextError extends Error {
  constructor(
    readonly kind: TpmFailureKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TpmContextError';
  }
}

/** Label under which provisioning links the handle's key into the token, e.g. `0x81010004`. */
export function defaultKeyLabel(handle: number): string {
  return formatHandle(handle);
}

/** The libp11 engine key URI. The PIN comes from a file so it is neither prompted for nor in argv. */
export function engineKeyUri(cfg: Pick<TpmKeyConfig, 'token' | 'keyLabel' | 'pinFile'>): string {
  const pinPath = encodeURIComponent(path.resolve(cfg.pinFile)).replace(/%2F/gi, '/');
  return (
    `pkcs11:token=${encodeURIComponent(cfg.token)};object=${encodeURIComponent(cfg.keyLabel)};type=private` +
    `?pin-source=file:${pinPath}`
  );
}

/**
 * libtpm2_pkcs11 and libp11 read their settings from the environment when the engine first loads, so
 * the flags are written there before the first SecureContext. Node's bundled OpenSSL has
 * ENGINESDIR=/dev/null, hence OPENSSL_ENGINES.
 */
export function prepareEngineEnvironment(cfg: TpmKeyConfig): void {
  process.env['TPM2_PKCS11_TCTI'] = cfg.tcti;
  if (cfg.store !== undefined) process.env['TPM2_PKCS11_STORE'] = path.resolve(cfg.store);
  const modulePath =
    cfg.modulePath ?? process.env['PKCS11_MODULE_PATH'] ?? findMultiarch('pkcs11/libtpm2_pkcs11.so');
  if (modulePath === undefined || !existsSync(modulePath)) {
    throw new TpmContextError(
      'engine_missing',
      `tpm2-pkcs11 module not found (${modulePath ?? 'libtpm2_pkcs11.so'}); install libtpm2-pkcs11-1 or pass --pkcs11-module`,
    );
  }
  process.env['PKCS11_MODULE_PATH'] = modulePath;
  if (process.env['OPENSSL_ENGINES'] === undefined) {
    const engine = findMultiarch('engines-3/pkcs11.so');
    if (engine === undefined) {
      throw new TpmContextError(
        'engine_missing',
        'OpenSSL pkcs11 engine (engines-3/pkcs11.so) not found; install libengine-pkcs11-openssl or set OPENSSL_ENGINES',
      );
    }
    process.env['OPENSSL_ENGINES'] = path.dirname(engine);
  }
}

/**
 * The PIN as libp11 will read it: verbatim. A trailing newline (what `echo pin > file` writes) would be
 * part of the PIN and fail the login, costing a dictionary-attack strike, so it is refused up front.
 */
export async function readPinFile(file: string): Promise<string> {
  let pin: string;
  try {
    pin = await readFile(file, 'utf8');
  } catch (err) {
    throw new TpmContextError('pin_file_unreadable', `PIN file ${file}: ${errorText(err)}`);
  }
  assertUsablePin(file, pin);
  return pin;
}

function assertUsablePin(file: string, pin: string): void {
  if (pin === '') throw new TpmContextError('pin_file_unreadable', `PIN file ${file} is empty`);
  if (/[\r\n]/.test(pin)) {
    throw new TpmContextError(
      'pin_file_unreadable',
      `PIN file ${file} contains a line break; the engine reads the file verbatim, so write it without one ` +
        `(printf '%s' "$PIN" > ${file})`,
    );
  }
}

/**
 * A SecureContext presenting `certPem` with the TPM key, trusting only `caPem` for the gateway. Creating
 * it logs in to the token and checks that the certificate matches the key, so a wrong PIN, a missing key
 * or a foreign certificate fail here, at start-up, rather than on the first CONNECT.
 */
export function createTpmSecureContext(
  cfg: TpmKeyConfig,
  certPem: string,
  caPem: string | undefined,
): tls.SecureContext {
  prepareEngineEnvironment(cfg);
  let pin: string;
  try {
    pin = readFileSync(cfg.pinFile, 'utf8');
  } catch (err) {
    throw new TpmContextError('pin_file_unreadable', `PIN file ${cfg.pinFile}: ${errorText(err)}`);
  }
  assertUsablePin(cfg.pinFile, pin);
  try {
    return tls.createSecureContext({
      privateKeyEngine: 'pkcs11',
      privateKeyIdentifier: engineKeyUri(cfg),
      cert: certPem,
      ...(caPem === undefined ? {} : { ca: caPem }),
      minVersion: 'TLSv1.3',
    });
  } catch (err) {
    throw classifyContextError(cfg, err);
  }
}

function classifyContextError(cfg: TpmKeyConfig, err: unknown): TpmContextError {
  const e = err as { message?: string; opensslErrorStack?: string[] };
  const text = [e.message ?? String(err), ...(e.opensslErrorStack ?? [])].join('; ');
  const where = `token ${JSON.stringify(cfg.token)}, key ${JSON.stringify(cfg.keyLabel)}`;
  if (/PIN incorrect|PIN_INCORRECT/i.test(text)) {
    return new TpmContextError('pin_incorrect', `TPM token login failed: PIN incorrect (${where})`, {
      cause: err,
    });
  }
  if (/key values mismatch/i.test(text)) {
    return new TpmContextError(
      'certificate_key_mismatch',
      `the client certificate's public key is not the TPM key (${where}): ${e.message}`,
      { cause: err },
    );
  }
  if (/object not found|no matching initialized token/i.test(text)) {
    return new TpmContextError('key_not_in_token', `TPM key not found in the PKCS#11 store (${where})`, {
      cause: err,
    });
  }
  if (/BIO routines::no such file|system library/i.test(text)) {
    return new TpmContextError('pin_file_unreadable', `PIN file ${cfg.pinFile} could not be read: ${text}`, {
      cause: err,
    });
  }
  if (
    /engine/i.test(text) &&
    /dso|not found|could not load|invalid engine/i.test(text) &&
    !/pkcs11 engine::/i.test(text)
  ) {
    return new TpmContextError('engine_missing', `OpenSSL pkcs11 engine could not be loaded: ${text}`, {
      cause: err,
    });
  }
  return new TpmContextError(
    'tpm_unavailable',
    `TPM/PKCS#11 failure loading the key (${where}, TCTI ${JSON.stringify(cfg.tcti)}): ${text}`,
    { cause: err },
  );
}

/**
 * True when a TLS handshake failed because the TPM could not sign (the engine reports a PKCS#11 error).
 * libp11 caches the module state, so the process cannot recover from this by retrying: callers exit and
 * let their supervisor restart them once the TPM is back.
 */
export function isTpmSigningFailure(err: unknown): boolean {
  const e = err as { message?: string; library?: string; opensslErrorStack?: string[] } | undefined;
  if (e === undefined || e === null) return false;
  const text = [e.message ?? '', e.library ?? '', ...(e.opensslErrorStack ?? [])].join('; ');
  return /PKCS#11 module|pkcs11 engine|engine routines/i.test(text);
}

function findMultiarch(rel: string): string | undefined {
  const roots = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu'];
  try {
    for (const d of readdirSync('/usr/lib'))
      if (d.endsWith('-linux-gnu')) roots.push(path.join('/usr/lib', d));
  } catch {
    // no /usr/lib: fall through to undefined
  }
  roots.push('/usr/lib', '/usr/local/lib');
  for (const r of roots) {
    const candidate = path.join(r, rel);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}
