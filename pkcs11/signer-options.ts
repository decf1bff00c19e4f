/**
 * What a signer needs to find its token and key, read from the registry CLI's environment variables
 * (registry-cli/README.md lists them), and the label checks every entry point applies first.
 */
import { SignerError } from './signer-error.js';

export const DEFAULT_TOKEN_LABEL = 'agent-gateway';

/** Debian's tpm2-pkcs11 module for this machine's multiarch triplet. */
export const DEFAULT_MODULE_PATH = `/usr/lib/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu/pkcs11/libtpm2_pkcs11.so`;

// PKCS#11 token labels are 32 bytes, blank padded.
export const TOKEN_LABEL_BYTES = 32;

export type TokenOptions = {
  /** Path of the PKCS#11 module (env TPM2_PKCS11_MODULE). */
  readonly modulePath: string;
  /** tpm2-pkcs11 store directory (env TPM2_PKCS11_STORE). */
  readonly store: string;
  readonly tokenLabel: string;
};

export type KeyOptions = TokenOptions & { readonly keyLabel: string };

export type SignerOptions = KeyOptions & {
  readonly userPin: string;
  /** Only needed to create the token. */
  readonly soPin?: string | undefined;
  /** Create the store directory, token and key when missing (default: they must exist). */
  readonly create?: boolean;
};

export type EnvLike = Readonly<Record<string, string | undefined>>;

/**
 * Signer options from the registry CLI's environment variables. Throws SignerError('config') naming the
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

export function validateLabels(opts: KeyOptions): void {
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

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}
