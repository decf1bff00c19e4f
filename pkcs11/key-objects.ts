/**
 * Key objects in an open session, found by label: the private key a signer uses (created with
 * C_GenerateKeyPair, CKM_EC_KEY_PAIR_GEN P-256, CKA_SENSITIVE=true, CKA_EXTRACTABLE=false, when missing;
 * keys made by `tpm2_ptool addkey --algorithm=ecc256` are found the same way) and its public key as SPKI.
 */
import { randomBytes } from 'node:crypto';
import * as asn1js from 'asn1js';
import pkcs11js from 'pkcs11js';
import { ecPointToSpki, P256_OID } from './ec-point.js';
import { pkcs11Call, SignerError } from './signer-error.js';
import type { KeyOptions } from './signer-options.js';

export function findPrivateKey(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  opts: KeyOptions,
): pkcs11js.Handle | undefined {
  const keys = findObjects(lib, session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_LABEL, value: opts.keyLabel },
  ]);
  if (keys.length > 1) throw keyAmbiguous(opts, keys.length);
  const key = keys[0];
  if (key === undefined) return undefined;
  const [type] = pkcs11Call('read key type', () =>
    lib.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_KEY_TYPE }]),
  );
  if (type === undefined || readUlong(type.value) !== pkcs11js.CKK_EC) {
    throw new SignerError('key_unsupported', `key ${JSON.stringify(opts.keyLabel)} is not an EC key`);
  }
  return key;
}

export function generateKey(lib: pkcs11js.PKCS11, session: pkcs11js.Handle, label: string): pkcs11js.Handle {
  const ecParams = Buffer.from(new asn1js.ObjectIdentifier({ value: P256_OID }).toBER(false));
  const id = randomBytes(16);
  const { privateKey } = pkcs11Call(`generate P-256 key ${JSON.stringify(label)}`, () =>
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
export function publicKeySpki(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  privateKey: pkcs11js.Handle,
  opts: KeyOptions,
): Buffer {
  const [idAttr] = pkcs11Call('read key id', () =>
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

/** SPKI of the public object labelled `keyLabel`: public objects need no login, so no PIN. */
export function publicObjectSpki(lib: pkcs11js.PKCS11, session: pkcs11js.Handle, opts: KeyOptions): Buffer {
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
}

function findObjects(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  template: pkcs11js.Template,
): pkcs11js.Handle[] {
  return pkcs11Call('find objects', () => {
    lib.C_FindObjectsInit(session, template);
    try {
      return lib.C_FindObjects(session, 16);
    } finally {
      lib.C_FindObjectsFinal(session);
    }
  });
}

/** SPKI of an EC key object (public, or tpm2-pkcs11's private object, which also has CKA_EC_POINT). */
export function spkiFromObject(
  lib: pkcs11js.PKCS11,
  session: pkcs11js.Handle,
  object: pkcs11js.Handle,
  label: string,
): Buffer {
  const attrs = pkcs11Call(`read public point of ${JSON.stringify(label)}`, () =>
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

function keyAmbiguous(opts: KeyOptions, n: number): SignerError {
  return new SignerError(
    'key_ambiguous',
    `${n} keys are labelled ${JSON.stringify(opts.keyLabel)} in token ${JSON.stringify(opts.tokenLabel)}`,
  );
}

// CK_ULONG is the platform's unsigned long: 8 bytes on 64-bit Linux, 4 on 32-bit builds.
function readUlong(value: Buffer): number {
  return value.length === 8 ? Number(value.readBigUInt64LE(0)) : value.readUInt32LE(0);
}
