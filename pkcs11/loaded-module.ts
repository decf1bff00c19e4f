/**
 * The process's one PKCS#11 module instance. tpm2-pkcs11 reads its configuration from the environment at
 * C_Initialize: TPM2_PKCS11_STORE (sqlite store), TPM2_PKCS11_TCTI (how to reach the TPM). A second
 * C_Initialize fails with CKR_CRYPTOKI_ALREADY_INITIALIZED, so signers share the instance by reference
 * count and the last release calls C_Finalize.
 */
import { existsSync, mkdirSync } from 'node:fs';
import pkcs11js from 'pkcs11js';
import { errorText } from '../core/error-text.js';
import { SignerError } from './signer-error.js';
import type { TokenOptions } from './signer-options.js';

export type LoadedModule = {
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

/** The loaded module (loading and initialising it first if needed); pair every call with releaseModule. */
export function acquireModule(opts: TokenOptions, create: boolean): LoadedModule {
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
      `cannot load PKCS#11 module ${opts.modulePath} (TPM2_PKCS11_MODULE): ${errorText(err)}`,
      { cause: err },
    );
  }
  try {
    lib.C_Initialize();
  } catch (err) {
    lib.close();
    throw new SignerError(
      'tpm_unavailable',
      `tpm2-pkcs11 failed to initialise (${errorText(err)}): is the TPM reachable ` +
        `(TPM2_PKCS11_TCTI=${process.env['TPM2_PKCS11_TCTI'] ?? '<default>'}) and the store ${opts.store} ` +
        'readable? Set TSS2_LOG=all+error for the TPM library diagnostics',
      { cause: err },
    );
  }
  loaded = { lib, modulePath: opts.modulePath, store: opts.store, refs: 1, logins: new Map() };
  return loaded;
}

export function releaseModule(mod: LoadedModule): void {
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
