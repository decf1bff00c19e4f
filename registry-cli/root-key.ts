/**
 * The root key as the CLI uses it (docs/contract.md "Root of trust"): a P-256 key in a PKCS#11 token,
 * named everywhere by its self-certifying id rootKeyId(SPKI) and found in the token by that id, so a
 * mistyped or reused label can never make the CLI sign with the wrong key.
 * By default the root lives in the principals' token; AGENT_GATEWAY_ROOT_TOKEN_LABEL and
 * AGENT_GATEWAY_ROOT_USER_PIN point at a token of its own (README: keep it offline in production).
 */
import { rootKeyId } from '../core/root-signed-bytes.js';
import { openSigner, type Signer } from '../pkcs11/signer.js';
import { type SignerOptions, signerOptionsFromEnv } from '../pkcs11/signer-options.js';
import { listPublicKeys } from '../pkcs11/token-keys.js';
import type { Env } from './env.js';
import { EnvironmentError, UsageError } from './errors.js';

export const DEFAULT_ROOT_LABEL = 'registry-root';
const ROOT_KEY_ID = /^sha256:[0-9a-f]{64}$/;

/** A --root-key argument: exactly the id init-root.sh prints. */
export function parseRootKeyId(text: string, what = '--root-key'): string {
  if (!ROOT_KEY_ID.test(text)) {
    throw new UsageError(
      `${what} must be a root key id, "sha256:" and 64 lowercase hex digits as init-root.sh prints it, ` +
        `got ${JSON.stringify(text)}`,
    );
  }
  return text;
}

/** Where the root key lives: the principals' token unless the ROOT variables say otherwise. */
export function rootSignerOptions(env: Env, keyLabel: string): SignerOptions {
  const base = signerOptionsFromEnv(keyLabel, {
    ...env,
    AGENT_GATEWAY_TPM_TOKEN_LABEL:
      env['AGENT_GATEWAY_ROOT_TOKEN_LABEL'] || env['AGENT_GATEWAY_TPM_TOKEN_LABEL'],
    AGENT_GATEWAY_TPM_USER_PIN: env['AGENT_GATEWAY_ROOT_USER_PIN'] || env['AGENT_GATEWAY_TPM_USER_PIN'],
  });
  return base;
}

/**
 * Open a signer on the root key whose id is `id`. The token's public keys are searched by SPKI hash; a
 * root that is not there is an environment error that names the token and the roots it does hold.
 */
export function openRootSigner(env: Env, id: string): Signer {
  const probe = rootSignerOptions(env, DEFAULT_ROOT_LABEL);
  const keys = listPublicKeys(probe);
  const match = keys.filter((k) => rootKeyId(k.spkiDer) === id);
  if (match.length === 0) {
    const held = keys.map((k) => `${k.label} (${rootKeyId(k.spkiDer)})`);
    throw new EnvironmentError(
      `root key ${id} is not in token "${probe.tokenLabel}" of ${probe.store}; ` +
        `the token holds ${held.length === 0 ? 'no keys' : held.join(', ')}: check --root-key, ` +
        'AGENT_GATEWAY_ROOT_TOKEN_LABEL and TPM2_PKCS11_STORE',
    );
  }
  const signer = openSigner({ ...probe, keyLabel: match[0]!.label });
  if (rootKeyId(signer.spkiDer) !== id) {
    signer.close();
    throw new EnvironmentError(
      `the private key labelled ${match[0]!.label} in token "${probe.tokenLabel}" is not root ${id}`,
    );
  }
  return signer;
}

/** Sign `message` with root `id`, closing the token session afterwards. */
export function signWithRoot(env: Env, id: string, messages: readonly Buffer[]): Buffer[] {
  const signer = openRootSigner(env, id);
  try {
    return messages.map((m) => signer.sign(m));
  } finally {
    signer.close();
  }
}
