/**
 * Tokens and sessions: find a token by label, create one through PKCS#11 itself (C_InitToken +
 * C_InitPIN; tpm2-pkcs11 also creates the persistent primary key it needs), open and close sessions, and
 * the user login that all sessions of a token share (see LoadedModule.logins).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { errorText } from '../core/error-text.js';
import type { LoadedModule } from './loaded-module.js';
import { errorCode, pkcs11Call, SignerError } from './signer-error.js';
import { type SignerOptions, TOKEN_LABEL_BYTES, type TokenOptions } from './signer-options.js';

export function findToken(lib: pkcs11js.PKCS11, opts: TokenOptions): pkcs11js.Handle | undefined {
  const matching = pkcs11Call(`list tokens in ${opts.store}`, () =>
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

export function tokenNotFound(opts: TokenOptions): SignerError {
  return new SignerError(
    'token_not_found',
    `token ${JSON.stringify(opts.tokenLabel)} not found in tpm2-pkcs11 store ${opts.store} ` +
      '(AGENT_GATEWAY_TPM_TOKEN_LABEL, TPM2_PKCS11_STORE)',
  );
}

export function createToken(
  lib: pkcs11js.PKCS11,
  label: string,
  soPin: string,
  userPin: string,
): pkcs11js.Handle {
  // tpm2-pkcs11 always offers one uninitialised slot for a new token.
  const free = pkcs11Call('list slots', () =>
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
      `cannot create token ${JSON.stringify(label)}: ${errorText(err)}`,
      { cause: err },
    );
  }
  return free;
}

export function openSession(
  lib: pkcs11js.PKCS11,
  slot: pkcs11js.Handle,
  readWrite: boolean,
): pkcs11js.Handle {
  const flags = pkcs11js.CKF_SERIAL_SESSION | (readWrite ? pkcs11js.CKF_RW_SESSION : 0);
  return pkcs11Call('open session', () => lib.C_OpenSession(slot, flags));
}

export function closeSession(
  mod: LoadedModule,
  session: pkcs11js.Handle,
  loginKey: string | undefined,
): void {
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
export function login(
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
    throw new SignerError('pkcs11', `login to token ${token} failed: ${errorText(err)}`, { cause: err });
  }
  mod.logins.set(key, { pinHash, sessions: 1 });
  return key;
}

function trimLabel(label: string): string {
  return label.replace(/[\s\u0000]+$/, '');
}
