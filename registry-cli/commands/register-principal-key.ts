/**
 * register-principal-key KEY_ID [VALID_DAYS]: make sure a non-exportable P-256 key labelled KEY_ID exists
 * in the TPM token (creating token and key when missing) and that principal_signing_keys holds its SPKI.
 * Idempotent: a second run finds the same key and only renews the validity window. A different key
 * already registered under KEY_ID is replaced only with --replace.
 */
import { writeFileSync } from 'node:fs';
import { ensureKey, signerOptionsFromEnv } from '../../core/pkcs11-signer.js';
import { spkiFingerprint, spkiToPem } from '../../core/spki-input.js';
import { checkField } from '../args.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, Refusal, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import {
  insertSigningKey,
  keyIdBySpki,
  lockSigningKey,
  refreshSigningKey,
  replaceSigningKey,
  type SigningKeyRow,
} from '../registry-writes.js';

export type RegisterOptions = {
  readonly keyId: string;
  readonly validDays: number;
  readonly replace: boolean;
  /** Also write the public key (PEM SPKI) here. */
  readonly publicKeyOut?: string | undefined;
};

export async function registerPrincipalKey(ctx: CommandContext, opts: RegisterOptions): Promise<ExitCode> {
  const keyId = checkField('KEY_ID', opts.keyId);
  const target = databaseFromEnv(ctx.env);
  const signerOptions = signerOptionsFromEnv(keyId, ctx.env);

  const result = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      // Two registrations against one token would each create the token or key they do not see yet.
      await db.query('SELECT pg_advisory_xact_lock(hashtext($1))', [
        `agent_gateway.tpm_token:${signerOptions.store}:${signerOptions.tokenLabel}`,
      ]);
      const existing = await lockSigningKey(db, keyId, 'update');
      if (existing?.revokedAt != null) {
        throw new Refusal(
          `principal key ${keyId} was revoked at ${existing.revokedAt}; a revoked key id is never reused: ` +
            'register the new key under another KEY_ID',
        );
      }
      const { spkiDer, created } = ensureKey(signerOptions);
      const holder = await keyIdBySpki(db, spkiDer);
      if (holder !== undefined && holder !== keyId) {
        throw new Refusal(
          `the TPM key labelled ${keyId} is already registered as principal key ${holder}; ` +
            'one key cannot be two principals',
        );
      }
      let row: SigningKeyRow;
      let action: 'registered' | 'refreshed' | 'replaced';
      if (existing === undefined) {
        row = await insertSigningKey(db, keyId, spkiDer, opts.validDays);
        action = 'registered';
      } else if (existing.spkiDer.equals(spkiDer)) {
        row = await refreshSigningKey(db, keyId, opts.validDays);
        action = 'refreshed';
      } else if (!opts.replace) {
        throw new Refusal(
          `principal key ${keyId} is registered with a different public key ` +
            `(registered sha256 ${spkiFingerprint(existing.spkiDer)}, TPM key sha256 ${spkiFingerprint(spkiDer)}); ` +
            'pass --replace to register the TPM key instead: permissions signed by the old key then stop working',
        );
      } else {
        row = await replaceSigningKey(db, keyId, spkiDer, opts.validDays);
        action = 'replaced';
      }
      return { row, action, created };
    }),
  );

  if (opts.publicKeyOut !== undefined) {
    try {
      writeFileSync(opts.publicKeyOut, spkiToPem(result.row.spkiDer));
    } catch (err) {
      throw new UsageError(`registered, but cannot write ${opts.publicKeyOut}: ${(err as Error).message}`);
    }
  }
  const made = [result.created.token && 'token', result.created.key && 'key'].filter(Boolean).join(' and ');
  ctx.io.out(
    `${result.action} principal key ${keyId}` +
      (made === '' ? ' (existing TPM key)' : ` (created TPM ${made} in token "${signerOptions.tokenLabel}")`),
  );
  ctx.io.out(`  public key sha256: ${spkiFingerprint(result.row.spkiDer)}`);
  ctx.io.out(`  valid: ${result.row.notBefore} .. ${result.row.notAfter}`);
  return EXIT_OK;
}
