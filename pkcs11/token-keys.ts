/**
 * The EC public keys a token holds, by label, read without logging in (public objects need no PIN). The
 * registry CLI finds a root key by its id, the hash of its SPKI (docs/contract.md "Root of trust"),
 * rather than by a label an admin could mistype or reuse.
 */
import pkcs11js from 'pkcs11js';
import { spkiFromObject } from './key-objects.js';
import { acquireModule, releaseModule } from './loaded-module.js';
import { pkcs11Call } from './signer-error.js';
import type { TokenOptions } from './signer-options.js';
import { closeSession, findToken, openSession, tokenNotFound } from './token-session.js';

export type TokenPublicKey = { readonly label: string; readonly spkiDer: Buffer };

// A token with more keys than this is not one this tool made; the search stops there.
const MAX_KEYS = 1024;

/** Every EC public key object in the token, in the order the token lists them. */
export function listPublicKeys(opts: TokenOptions): TokenPublicKey[] {
  const mod = acquireModule(opts, false);
  let session: pkcs11js.Handle | undefined;
  try {
    const slot = findToken(mod.lib, opts);
    if (slot === undefined) throw tokenNotFound(opts);
    session = openSession(mod.lib, slot, false);
    const { lib } = mod;
    const s = session;
    const handles = pkcs11Call('find public keys', () => {
      lib.C_FindObjectsInit(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
      ]);
      try {
        return lib.C_FindObjects(s, MAX_KEYS);
      } finally {
        lib.C_FindObjectsFinal(s);
      }
    });
    return handles.map((h) => {
      const [label] = pkcs11Call('read key label', () =>
        lib.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_LABEL }]),
      );
      const text = label?.value.toString('utf8') ?? '';
      return { label: text, spkiDer: spkiFromObject(lib, s, h, text) };
    });
  } finally {
    if (session !== undefined) closeSession(mod, session, undefined);
    releaseModule(mod);
  }
}
