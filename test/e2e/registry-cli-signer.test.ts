// The PKCS#11 signer (pkcs11/) against a real swtpm through real tpm2-pkcs11: token and key creation, the
// key's non-extractability as the token reports it, signatures that verify, and the errors that name what
// is wrong. tpm2-pkcs11 reads its TCTI and store from the environment of this process, so this file
// (its own vitest worker process) points process.env at its own TPM.
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as asn1js from 'asn1js';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { p256PublicKey, verifyDerSignature } from '../../core/ecdsa.js';
import {
  addKey,
  provisionToken,
  readPublicSpki,
  startSwtpm,
  type TpmHandle,
} from '../../dev-support/swtpm.js';
import { ensureKey, findKey, openSigner, readPublicKeySpki, withSigner } from '../../pkcs11/signer.js';
import { SignerError } from '../../pkcs11/signer-error.js';
import type { SignerOptions } from '../../pkcs11/signer-options.js';

const USER_PIN = 'user-pin-1234';
const SO_PIN = 'so-pin-5678';
const TOKEN = 'agent-gateway';

let tpm: TpmHandle;
let base: SignerOptions;

beforeAll(async () => {
  tpm = await startSwtpm();
  Object.assign(process.env, tpm.env);
  base = {
    modulePath: tpm.env.TPM2_PKCS11_MODULE,
    store: tpm.env.TPM2_PKCS11_STORE,
    tokenLabel: TOKEN,
    keyLabel: 'org-alice',
    userPin: USER_PIN,
    soPin: SO_PIN,
  };
});

afterAll(async () => {
  await tpm?.stop();
});

/** Read attributes of the private key labelled `label` with pkcs11js directly, not through the signer. */
function privateKeyAttributes(
  label: string,
  types: number[],
): { values: Map<number, Buffer>; valueError: string } {
  const lib = new pkcs11js.PKCS11();
  lib.load(base.modulePath);
  lib.C_Initialize();
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === TOKEN);
    if (slot === undefined) throw new Error('token not found');
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    try {
      lib.C_Login(session, pkcs11js.CKU_USER, USER_PIN);
      lib.C_FindObjectsInit(session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_LABEL, value: label },
      ]);
      const [key] = lib.C_FindObjects(session, 2);
      lib.C_FindObjectsFinal(session);
      if (key === undefined) throw new Error(`no private key ${label}`);
      const values = new Map(
        lib
          .C_GetAttributeValue(
            session,
            key,
            types.map((type) => ({ type })),
          )
          .map((a) => [a.type, a.value]),
      );
      let valueError = '';
      try {
        lib.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_VALUE }]);
      } catch (err) {
        valueError = (err as Error).message;
      }
      return { values, valueError };
    } finally {
      lib.C_CloseSession(session);
    }
  } finally {
    lib.C_Finalize();
    lib.close();
  }
}

describe('pkcs11 signer on a fresh TPM', () => {
  it('without create, reports the missing store / token', () => {
    expect(() => openSigner(base)).toThrow(SignerError);
    try {
      openSigner(base);
    } catch (err) {
      expect((err as SignerError).kind).toBe('token_not_found');
      expect((err as Error).message).toContain(base.store);
    }
  });

  it('needs the SO PIN to create the token, and says so', () => {
    let error: unknown;
    try {
      ensureKey({ ...base, soPin: undefined });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SignerError);
    expect((error as SignerError).kind).toBe('config');
    expect((error as Error).message).toContain('AGENT_GATEWAY_TPM_SO_PIN');
  });

  it('creates token and key, then finds the same key again', () => {
    const first = ensureKey(base);
    expect(first.created).toEqual({ token: true, key: true });
    const second = ensureKey(base);
    expect(second.created).toEqual({ token: false, key: false });
    expect(second.spkiDer.equals(first.spkiDer)).toBe(true);
    expect(p256PublicKey(first.spkiDer).asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  });

  it('builds the SPKI the token exports (pkcs11-tool) and reads it without a PIN', () => {
    const ours = ensureKey(base).spkiDer;
    expect(readPublicSpki(tpm, { token: TOKEN, label: 'org-alice' }).equals(ours)).toBe(true);
    const { userPin: _pin, ...noPin } = base;
    expect(readPublicKeySpki(noPin).equals(ours)).toBe(true);
  });

  it('made the key sensitive and never extractable: its value cannot be read', () => {
    const { values, valueError } = privateKeyAttributes('org-alice', [
      pkcs11js.CKA_SENSITIVE,
      pkcs11js.CKA_EXTRACTABLE,
      pkcs11js.CKA_ALWAYS_SENSITIVE,
      pkcs11js.CKA_NEVER_EXTRACTABLE,
      pkcs11js.CKA_SIGN,
    ]);
    expect(values.get(pkcs11js.CKA_SENSITIVE)).toEqual(Buffer.from([1]));
    expect(values.get(pkcs11js.CKA_EXTRACTABLE)).toEqual(Buffer.from([0]));
    expect(values.get(pkcs11js.CKA_ALWAYS_SENSITIVE)).toEqual(Buffer.from([1]));
    expect(values.get(pkcs11js.CKA_NEVER_EXTRACTABLE)).toEqual(Buffer.from([1]));
    expect(values.get(pkcs11js.CKA_SIGN)).toEqual(Buffer.from([1]));
    expect(valueError).toMatch(/^CKR_/);
  });

  it('signs: DER ECDSA over SHA-256 that verifies with the SPKI, fresh randomness each time', async () => {
    const message = Buffer.from('agent-gateway-permission-v1\npermission_id=perm-1\n');
    const { spkiDer, a, b } = await withSigner(base, (signer) => ({
      spkiDer: signer.spkiDer,
      a: signer.sign(message),
      b: signer.sign(message),
    }));
    const key = p256PublicKey(spkiDer);
    expect(verifyDerSignature(key, message, a)).toBe(true);
    expect(verifyDerSignature(key, message, b)).toBe(true);
    expect(a.equals(b)).toBe(false);
    expect(verifyDerSignature(key, Buffer.from('other'), a)).toBe(false);
    // DER ECDSA-Sig-Value: SEQUENCE of two INTEGERs.
    const parsed = asn1js.fromBER(new Uint8Array(a));
    expect(parsed.offset).toBe(a.length);
    expect(parsed.result).toBeInstanceOf(asn1js.Sequence);
  });

  it('a closed signer refuses to sign, and close is idempotent', () => {
    const signer = openSigner(base);
    signer.close();
    signer.close();
    expect(() => signer.sign(Buffer.from('x'))).toThrow(/closed/);
  });

  it('close() during a signAsync waits for its C_Sign: that signature verifies, queued ones fail, the module is released', async () => {
    const signer = openSigner(base);
    const message = Buffer.from('receipt checkpoint');
    const running = signer.signAsync(message);
    const queued = signer.signAsync(message);
    // The first sign starts in the next microtask; after it, its C_Sign is on libuv's pool, and closing
    // the session under it must wait for it.
    await Promise.resolve();
    signer.close();
    const signature = await running;
    expect(verifyDerSignature(p256PublicKey(signer.spkiDer), message, signature)).toBe(true);
    await expect(queued).rejects.toThrow(/closed/);
    await expect(signer.signAsync(message)).rejects.toThrow(/closed/);
    // The deferred close finalized the module: a new signer starts from scratch and signs.
    const again = openSigner(base);
    try {
      expect(verifyDerSignature(p256PublicKey(again.spkiDer), message, again.sign(message))).toBe(true);
    } finally {
      again.close();
    }
  });

  it('two signers can be open in one process (one module, reference counted)', () => {
    ensureKey({ ...base, keyLabel: 'org-bob' });
    const alice = openSigner(base);
    const bob = openSigner({ ...base, keyLabel: 'org-bob' });
    try {
      // The token is already logged in for this process; a wrong PIN must still be refused. It is
      // compared in this process, the TPM never sees it: no dictionary-attack claim.
      let error: unknown;
      try {
        openSigner({ ...base, userPin: 'wrong-pin' });
      } catch (err) {
        error = err;
      }
      expect((error as SignerError).kind).toBe('pin_incorrect');
      expect((error as Error).message).toMatch(/wrong user PIN/);
      expect((error as Error).message).not.toMatch(/dictionary-attack/);
      const m = Buffer.from('both');
      expect(verifyDerSignature(p256PublicKey(alice.spkiDer), m, alice.sign(m))).toBe(true);
      alice.close();
      expect(verifyDerSignature(p256PublicKey(bob.spkiDer), m, bob.sign(m))).toBe(true);
    } finally {
      alice.close();
      bob.close();
    }
    // Everything was finalized: a new open starts from scratch and works.
    openSigner(base).close();
  });

  it('finds keys created by tpm2_ptool addkey by label', async () => {
    await addKey(tpm, { token: TOKEN, label: 'ptool-key', userPin: USER_PIN });
    const viaTool = readPublicSpki(tpm, { token: TOKEN, label: 'ptool-key' });
    const signature = await withSigner({ ...base, keyLabel: 'ptool-key' }, (signer) => {
      expect(signer.spkiDer.equals(viaTool)).toBe(true);
      expect(signer.created).toEqual({ token: false, key: false });
      return signer.sign(Buffer.from('ptool'));
    });
    expect(verifyDerSignature(p256PublicKey(viaTool), Buffer.from('ptool'), signature)).toBe(true);
  });

  it('finds a token created by tpm2_ptool addtoken', async () => {
    await provisionToken(tpm, { token: 'ptool-token', userPin: USER_PIN, soPin: SO_PIN });
    const r = ensureKey({ ...base, tokenLabel: 'ptool-token', keyLabel: 'k1' });
    expect(r.created).toEqual({ token: false, key: true });
  });

  it.each([
    [
      'a wrong user PIN, and that the TPM counted it',
      { userPin: 'wrong-pin' },
      'pin_incorrect',
      /wrong user PIN.*AGENT_GATEWAY_TPM_USER_PIN.*dictionary-attack counter was incremented: repeated wrong PINs lock the key/,
    ],
    ['a missing key without create', { keyLabel: 'nobody', create: false }, 'key_not_found', /nobody/],
    ['a missing token', { tokenLabel: 'no-such-token' }, 'token_not_found', /no-such-token/],
    [
      'a missing module',
      { modulePath: '/nonexistent/libtpm2_pkcs11.so' },
      'module_load',
      /TPM2_PKCS11_MODULE/,
    ],
    ['a token label too long for PKCS#11', { tokenLabel: 'x'.repeat(33) }, 'config', /1\.\.32 bytes/],
    ['a key label with a control character', { keyLabel: 'org\nalice' }, 'config', /control character/],
  ] as const)('names %s', (_name, patch, kind, message) => {
    let error: unknown;
    try {
      openSigner({ ...base, ...patch });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SignerError);
    expect((error as SignerError).kind).toBe(kind);
    expect((error as Error).message).toMatch(message);
    // The failure released the module: the next open works.
    openSigner(base).close();
  });

  it('findKey finds an existing key and creates nothing when token, store or key is missing', () => {
    const existing = findKey(base);
    expect('spkiDer' in existing && existing.spkiDer.equals(ensureKey(base).spkiDer)).toBe(true);

    expect(findKey({ ...base, keyLabel: 'not-made-here' })).toEqual({ missing: 'key' });
    const { userPin: _pin, ...noPin } = base;
    expect(() => readPublicKeySpki({ ...noPin, keyLabel: 'not-made-here' })).toThrow(
      /no public key labelled/,
    );

    expect(findKey({ ...base, tokenLabel: 'not-made-here' })).toEqual({ missing: 'token' });
    expect(() => readPublicKeySpki({ ...noPin, tokenLabel: 'not-made-here' })).toThrow(/not found/);

    const store = path.join(os.tmpdir(), `agw-no-store-${process.pid}`);
    expect(findKey({ ...base, store })).toEqual({ missing: 'token' });
    expect(existsSync(store)).toBe(false);
    process.env['TPM2_PKCS11_STORE'] = base.store;
    openSigner(base).close();
  });

  it('reports an unreachable TPM as such', () => {
    const saved = process.env['TPM2_PKCS11_TCTI'];
    const store = mkdtempSync(path.join(os.tmpdir(), 'agw-store-'));
    process.env['TPM2_PKCS11_TCTI'] = 'swtpm:host=127.0.0.1,port=1';
    try {
      let error: unknown;
      try {
        openSigner({ ...base, store });
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(SignerError);
      expect((error as SignerError).kind).toBe('tpm_unavailable');
      expect((error as Error).message).toMatch(/TPM2_PKCS11_TCTI=swtpm:host=127\.0\.0\.1,port=1/);
    } finally {
      process.env['TPM2_PKCS11_TCTI'] = saved;
      process.env['TPM2_PKCS11_STORE'] = base.store;
      rmSync(store, { recursive: true, force: true });
    }
    openSigner(base).close();
  });

  it('signs the digest computed in Node: the same bytes verify with a plain SHA-256 ECDSA check', async () => {
    const message = Buffer.from('x'.repeat(10_000));
    const der = await withSigner(base, (s) => s.sign(message));
    const key = p256PublicKey(ensureKey(base).spkiDer);
    expect(createHash('sha256').update(message).digest()).toHaveLength(32);
    expect(verifyDerSignature(key, message, der)).toBe(true);
  });
});
