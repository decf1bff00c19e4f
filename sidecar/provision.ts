/**
 * `agent_gateway_sidecar provision`: make the TPM key at the persistent handle and the carrier certificate.
 *
 * tpm2-pkcs11 cannot address a persistent handle: it loads keys from their TPM-wrapped blobs under the
 * store's primary key. So the key is created once under that primary, and the same key is both
 * persisted at --tpm-key-handle (tpm2_evictcontrol) and linked into the token (tpm2_ptool link) under a
 * label that names the handle. The private part is generated inside the TPM (sensitivedataorigin), bound
 * to it (fixedtpm|fixedparent) and only ever leaves it wrapped by the TPM's own parent key; the blobs are
 * deleted after linking. The key's authorization value is random, never printed or stored in clear: it
 * lives only wrapped in the token, so signing with the persisted copy still needs the token PIN.
 *
 * Re-running is safe: an existing, linked key is reused and only the certificate is rewritten.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { p256PublicKey } from '../core/ecdsa.js';
import { errorText } from '../core/error-text.js';
import type { ProvisionOptions } from './options.js';
import type { Logger } from './telemetry.js';
import { createTpmSecureContext, readPinFile, type TpmKeyConfig } from './tpm-context.js';
import {
  assertKeyAttributes,
  formatHandle,
  readPersistentKey,
  runTpmTool,
  TpmCommandError,
  type TpmToolsTarget,
} from './tpm-tools.js';

export type ProvisionResult = {
  readonly created: boolean;
  readonly handle: string;
  readonly token: string;
  readonly keyLabel: string;
  readonly spkiDer: Buffer;
  readonly certPath: string;
  readonly spkiPath: string | undefined;
};

export class ProvisionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ProvisionError';
  }
}

// Created in the TPM, bound to it and to its parent, signing only, usable with its auth value.
const KEY_ATTRIBUTES = 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign';

export async function provision(opts: ProvisionOptions, logger: Logger): Promise<ProvisionResult> {
  const cfg = opts.tpm;
  const target: TpmToolsTarget = { tcti: cfg.tcti, store: cfg.store };
  const userPin = await readPinFile(cfg.pinFile);
  const handle = formatHandle(cfg.keyHandle);

  const primary = await ensureToken(target, cfg, userPin, opts.soPinFile, logger);
  const persisted = await readPersistentKey(target, cfg.keyHandle);
  const linked = (await listKeyLabels(target, cfg.token)).includes(cfg.keyLabel);

  let created = false;
  if (persisted !== undefined && linked) {
    assertKeyAttributes(handle, persisted.attributes);
    logger.info({ handle, token: cfg.token, key_label: cfg.keyLabel }, 'reusing the persistent TPM key');
  } else if (persisted !== undefined) {
    throw new ProvisionError(
      `${handle} already holds a key that is not linked into token ${JSON.stringify(cfg.token)} as ` +
        `${JSON.stringify(cfg.keyLabel)}. tpm2-pkcs11 can only use keys it created or linked from their blobs, ` +
        `which a persisted object no longer has: choose another --tpm-key-handle, or evict it ` +
        `(tpm2_evictcontrol -C o -c ${handle}) if it is yours to discard.`,
    );
  } else if (linked) {
    throw new ProvisionError(
      `token ${JSON.stringify(cfg.token)} has a key labelled ${JSON.stringify(cfg.keyLabel)} but nothing is ` +
        `persisted at ${handle}: delete that object (tpm2_ptool objdel) or use another --pkcs11-key-label.`,
    );
  } else {
    await createPersistentLinkedKey(target, cfg, primary, userPin, logger);
    created = true;
  }

  const key = await readPersistentKey(target, cfg.keyHandle);
  if (key === undefined) throw new ProvisionError(`nothing persisted at ${handle} after provisioning`);
  p256PublicKey(key.spkiDer);

  // Imported here rather than at the top: main.ts imports this module for every run, and a running
  // sidecar must not carry @peculiar/x509 in its heap (bench/README.md "Idle memory").
  const { certificateSpki, createCarrierCertificate } = await import('../core/carrier-cert.js');
  const cert = await createCarrierCertificate({
    subjectSpkiDer: key.spkiDer,
    identity: opts.identity,
    oid: opts.identityOid,
    validDays: opts.validDays,
  });
  // Prove the whole chain before handing anything out: the token's key signs, and it is the handle's key
  // and the certificate's key (OpenSSL compares them when the context is built).
  try {
    createTpmSecureContext(cfg, cert.pem, undefined);
  } catch (err) {
    throw new ProvisionError(`the linked PKCS#11 key does not work: ${errorText(err)}`, {
      cause: err,
    });
  }
  if (!certificateSpki(cert.pem).equals(key.spkiDer))
    throw new ProvisionError('carrier certificate SPKI mismatch');

  await writeFile(opts.outCert, cert.pem, { mode: 0o644 });
  if (opts.outSpki !== undefined) await writeFile(opts.outSpki, key.spkiDer, { mode: 0o644 });
  logger.info(
    {
      handle,
      token: cfg.token,
      key_label: cfg.keyLabel,
      created,
      identity: opts.identity,
      cert: opts.outCert,
      spki: opts.outSpki,
      spki_hex: key.spkiDer.toString('hex'),
    },
    created
      ? 'created TPM key and carrier certificate'
      : 'wrote carrier certificate for the existing TPM key',
  );
  return {
    created,
    handle,
    token: cfg.token,
    keyLabel: cfg.keyLabel,
    spkiDer: key.spkiDer,
    certPath: opts.outCert,
    spkiPath: opts.outSpki,
  };
}

type Primary = { readonly id: string; readonly handle: string };

/** The store's primary that holds `cfg.token`, creating store and token when missing. */
async function ensureToken(
  target: TpmToolsTarget,
  cfg: TpmKeyConfig,
  userPin: string,
  soPinFile: string | undefined,
  logger: Logger,
): Promise<Primary> {
  let primaries = await listPrimaries(target);
  for (const p of primaries) {
    if ((await listTokens(target, p.id)).includes(cfg.token)) return p;
  }
  if (soPinFile === undefined) {
    throw new ProvisionError(
      `token ${JSON.stringify(cfg.token)} does not exist in the tpm2-pkcs11 store; pass --so-pin-file to create it`,
    );
  }
  const soPin = await readPinFile(soPinFile);
  if (primaries.length === 0) {
    await runTpmTool(target, 'tpm2_ptool', ['init', ...storeArg(target)]);
    primaries = await listPrimaries(target);
  }
  const primary = primaries[0];
  if (primary === undefined) throw new ProvisionError('tpm2_ptool init did not create a primary key');
  await runTpmTool(
    target,
    'tpm2_ptool',
    [
      'addtoken',
      `--pid=${primary.id}`,
      `--label=${cfg.token}`,
      `--userpin=${userPin}`,
      `--sopin=${soPin}`,
      ...storeArg(target),
    ],
    { redact: [userPin, soPin] },
  );
  logger.info({ token: cfg.token, primary: primary.handle }, 'created tpm2-pkcs11 token');
  return primary;
}

async function createPersistentLinkedKey(
  target: TpmToolsTarget,
  cfg: TpmKeyConfig,
  primary: Primary,
  userPin: string,
  logger: Logger,
): Promise<void> {
  const handle = formatHandle(cfg.keyHandle);
  // 128 random bits as 32 hex characters: printable, so tpm2-tools (-p) and tpm2-pkcs11 (which uses the
  // unwrapped string's bytes) agree on it, never mistaken for an option or a `hex:`/`file:` prefix, and
  // within the 32-byte limit of a SHA-256 name algorithm's authValue.
  const auth = randomBytes(16).toString('hex');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-provision-'));
  const pub = path.join(dir, 'key.pub');
  const priv = path.join(dir, 'key.priv');
  const ctx = path.join(dir, 'key.ctx');
  const secrets = [auth, userPin];
  try {
    await runTpmTool(
      target,
      'tpm2_create',
      ['-C', primary.handle, '-G', 'ecc256:null', '-a', KEY_ATTRIBUTES, '-p', auth, '-u', pub, '-r', priv],
      { redact: secrets },
    );
    await runTpmTool(target, 'tpm2_load', ['-C', primary.handle, '-u', pub, '-r', priv, '-c', ctx]);
    await runTpmTool(target, 'tpm2_evictcontrol', ['-C', 'o', '-c', ctx, handle]);
    // Without a resource manager the loaded copy would keep one of the TPM's few transient slots.
    await runTpmTool(target, 'tpm2_flushcontext', ['-t']).catch(() => {});
    try {
      await runTpmTool(
        target,
        'tpm2_ptool',
        [
          'link',
          `--label=${cfg.token}`,
          `--key-label=${cfg.keyLabel}`,
          `--userpin=${userPin}`,
          `--auth=${auth}`,
          ...storeArg(target),
          pub,
          priv,
        ],
        { redact: secrets },
      );
    } catch (err) {
      // Leave no persisted key that the token cannot use.
      await runTpmTool(target, 'tpm2_evictcontrol', ['-C', 'o', '-c', handle]).catch(() => {});
      throw err;
    }
    logger.info(
      { handle, primary: primary.handle, token: cfg.token, key_label: cfg.keyLabel },
      'created TPM key',
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function storeArg(target: TpmToolsTarget): string[] {
  return target.store === undefined ? [] : [`--path=${target.store}`];
}

async function listPrimaries(target: TpmToolsTarget): Promise<Primary[]> {
  const out = await runTpmTool(target, 'tpm2_ptool', ['listprimaries', ...storeArg(target)]).catch((err) => {
    // A store directory that was never initialised has no database yet.
    if (err instanceof TpmCommandError && /no such table|unable to open database/i.test(err.output))
      return '';
    throw err;
  });
  const primaries: Primary[] = [];
  for (const block of out.split(/\n(?=- )/)) {
    const id = /\bid:\s*(\d+)/.exec(block)?.[1];
    const esysTr = /esys-tr:\s*([0-9a-f]+)/i.exec(block)?.[1];
    if (id === undefined) continue;
    if (esysTr === undefined || /transient:\s*true/.test(block)) {
      throw new ProvisionError(
        `tpm2-pkcs11 primary ${id} is transient; a persistent key needs a persistent primary (tpm2_ptool init)`,
      );
    }
    // A serialized ESYS_TR starts with the TPM handle, big-endian.
    primaries.push({ id, handle: `0x${esysTr.slice(0, 8)}` });
  }
  return primaries;
}

async function listTokens(target: TpmToolsTarget, pid: string): Promise<string[]> {
  const out = await runTpmTool(target, 'tpm2_ptool', ['listtokens', `--pid=${pid}`, ...storeArg(target)]);
  return [...out.matchAll(/^\s*label:\s*(.*?)\s*$/gm)].map((m) => unquote(m[1] ?? ''));
}

/** Labels of private-key objects in the token. */
async function listKeyLabels(target: TpmToolsTarget, token: string): Promise<string[]> {
  const out = await runTpmTool(target, 'tpm2_ptool', [
    'listobjects',
    `--label=${token}`,
    ...storeArg(target),
  ]);
  const labels: string[] = [];
  for (const block of out.split(/\n(?=- )/)) {
    if (!/CKA_CLASS:\s*CKO_PRIVATE_KEY/.test(block)) continue;
    const label = /CKA_LABEL:\s*(.*?)\s*$/m.exec(block)?.[1];
    if (label !== undefined) labels.push(unquote(label));
  }
  return labels;
}

function unquote(yamlScalar: string): string {
  const m = /^'(.*)'$/.exec(yamlScalar) ?? /^"(.*)"$/.exec(yamlScalar);
  return m === null ? yamlScalar : (m[1] ?? '').replace(/''/g, "'");
}
