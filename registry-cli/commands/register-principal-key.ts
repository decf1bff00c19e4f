/**
 * register-principal-key KEY_ID [VALID_DAYS]: make sure a non-exportable P-256 key labelled KEY_ID exists
 * in the TPM token (creating token and key when missing) and that principal_signing_keys holds its SPKI.
 * Idempotent: a second run finds the same key and only renews the validity window, which never shrinks:
 * not_after = greatest(existing, now + VALID_DAYS). A different key already registered under KEY_ID is
 * replaced only with --replace, which in the same transaction revokes the scopes delegated to the old
 * key; while KEY_ID is registered nothing is created in the TPM without it: the registry is read before
 * the token is touched. With --root-key the row as written is signed by that root; without it, a change
 * to a root-signed row's window or key is refused (it would void the signature).
 */
import { writeFileSync } from 'node:fs';
import { errorText } from '../../core/error-text.js';
import { spkiFingerprint, spkiToPem } from '../../core/spki-input.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { ensureKey, findKey } from '../../pkcs11/signer.js';
import { signerOptionsFromEnv } from '../../pkcs11/signer-options.js';
import { checkKeyId } from '../args.js';
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
  revokeScopes,
  type ScopeRow,
  type SigningKeyRefresh,
  type SigningKeyRow,
} from '../registry-writes.js';
import { openRootSigner } from '../root-key.js';
import { refuseVoidingKeySignature, rootSignKey } from '../root-sign.js';

export type RegisterOptions = {
  readonly keyId: string;
  readonly validDays: number;
  readonly replace: boolean;
  /** Also write the public key (PEM SPKI) here. */
  readonly publicKeyOut?: string | undefined;
  /** Root-sign the registration (docs/contract.md "Root of trust"). */
  readonly rootKeyId?: string | undefined;
};

export async function registerPrincipalKey(ctx: CommandContext, opts: RegisterOptions): Promise<ExitCode> {
  const keyId = checkKeyId(opts.keyId);
  const target = databaseFromEnv(ctx.env);
  const signerOptions = signerOptionsFromEnv(keyId, ctx.env);
  // A root that is not in its token must fail before a principal key is created in the TPM.
  if (opts.rootKeyId !== undefined) openRootSigner(ctx.env, opts.rootKeyId).close();

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
      let spkiDer: Buffer;
      let created = { token: false, key: false };
      if (existing !== undefined && !opts.replace) {
        // KEY_ID names a registered public key: a key made now could only be a different one, which is
        // refused below anyway. So look without creating, and refuse before the TPM store changes.
        const found = findKey(signerOptions);
        if ('missing' in found) {
          const where =
            found.missing === 'token'
              ? `token "${signerOptions.tokenLabel}" does not exist in ${signerOptions.store}`
              : `token "${signerOptions.tokenLabel}" has no key labelled ${keyId}`;
          throw new Refusal(
            `principal key ${keyId} is registered (public key sha256 ${spkiFingerprint(existing.spkiDer)}), but ${where}; ` +
              'nothing was created: point TPM2_PKCS11_STORE / AGENT_GATEWAY_TPM_TOKEN_LABEL at the token that holds it, ' +
              'or pass --replace to create a new key and register it instead (permissions signed by the old key then stop working)',
          );
        }
        spkiDer = found.spkiDer;
      } else {
        ({ spkiDer, created } = ensureKey(signerOptions));
      }
      const holder = await keyIdBySpki(db, spkiDer);
      if (holder !== undefined && holder !== keyId) {
        throw new Refusal(
          `the TPM key labelled ${keyId} is already registered as principal key ${holder}; ` +
            'one key cannot be two principals',
        );
      }
      let row: SigningKeyRow;
      let action: 'registered' | 'refreshed' | 'replaced';
      let refresh: SigningKeyRefresh | undefined;
      let revokedScopes: ScopeRow[] = [];
      if (existing === undefined) {
        row = await insertSigningKey(db, keyId, spkiDer, opts.validDays);
        action = 'registered';
      } else if (existing.spkiDer.equals(spkiDer)) {
        refresh = await refreshSigningKey(db, keyId, opts.validDays);
        row = refresh.row;
        action = 'refreshed';
      } else if (!opts.replace) {
        throw new Refusal(
          `principal key ${keyId} is registered with a different public key ` +
            `(registered sha256 ${spkiFingerprint(existing.spkiDer)}, TPM key sha256 ${spkiFingerprint(spkiDer)}); ` +
            'pass --replace to register the TPM key instead: permissions signed by the old key then stop working',
        );
      } else {
        row = await replaceSigningKey(db, keyId, spkiDer, opts.validDays);
        // The old key's scopes were delegated to that key, not to whoever holds the id next.
        revokedScopes = await revokeScopes(db, keyId);
        action = 'replaced';
      }
      if (opts.rootKeyId !== undefined) await rootSignKey(ctx.env, db, keyId, opts.rootKeyId, opts.validDays);
      else if (existing !== undefined) await refuseVoidingKeySignature(db, existing, row);
      return { row, action, created, refresh, revokedScopes };
    }),
  );

  if (opts.publicKeyOut !== undefined) {
    try {
      writeFileSync(opts.publicKeyOut, spkiToPem(result.row.spkiDer));
    } catch (err) {
      throw new UsageError(`registered, but cannot write ${opts.publicKeyOut}: ${errorText(err)}`);
    }
  }
  const made = [result.created.token && 'token', result.created.key && 'key'].filter(Boolean).join(' and ');
  ctx.io.out(
    `${result.action} principal key ${keyId}` +
      (made === '' ? ' (existing TPM key)' : ` (created TPM ${made} in token "${signerOptions.tokenLabel}")`),
  );
  ctx.io.out(`  public key sha256: ${spkiFingerprint(result.row.spkiDer)}`);
  ctx.io.out(`  valid: ${result.row.notBefore} .. ${result.row.notAfter}`);
  if (opts.rootKeyId !== undefined) ctx.io.out(`  signed by root ${opts.rootKeyId}`);
  if (result.action === 'replaced') {
    const scopes = result.revokedScopes;
    ctx.io.out(
      scopes.length === 0
        ? '  the old key had no active scope; nothing else was revoked'
        : `  revoked the ${scopes.length} scope${scopes.length === 1 ? '' : 's'} delegated to the old key: ` +
            `${[...new Set(scopes.map((s) => s.destination))].join(', ')}; ` +
            `delegate again with grant-principal-scope.sh ${keyId} DEST...`,
    );
  }
  if (result.refresh !== undefined) ctx.io.err(refreshNote(result.refresh, opts.validDays));
  return EXIT_OK;
}

/** A refresh never shortens the registration: say what the window is now and why. */
function refreshNote(refresh: SigningKeyRefresh, validDays: number): string {
  const { row, previousNotAfter, requestedNotAfter } = refresh;
  const window = `${row.notBefore} .. ${row.notAfter}`;
  const requested = `now + ${validDays} day${validDays === 1 ? '' : 's'} (${requestedNotAfter})`;
  if (parseTimestamp(previousNotAfter) >= parseTimestamp(requestedNotAfter)) {
    return (
      `note: registration of ${row.keyId} kept at ${window}: ${requested} would end earlier, and a refresh ` +
      'never shortens a registration'
    );
  }
  return (
    `note: registration of ${row.keyId} extended to ${window} (not_after was ${previousNotAfter}); ` +
    'a refresh never shortens a registration'
  );
}
