/**
 * root-sign-pending --root-key ID [--trust-root B64 | --trust-root-file PEM | --config FILE]...
 * [--sign-unvouched] [--yes]: sign the active key and scope rows that carry no valid signature by root
 * ID (docs/contract.md "Root of trust").
 *
 * What the registry says about a row is not evidence: a `root_key_id` column can be written by anyone
 * who can write the table. So a row is re-signed only when its current signature verifies under a root
 * the operator names (--trust-root and friends, as `check` reads them: the old root during a rotation).
 * Every other row (never signed, signed by a root not named, or a signature that does not verify) is
 * "unvouched": it is listed with its key's public-key fingerprint, and signed only with
 * --sign-unvouched, for the first migration onto a root, after the operator has checked each
 * fingerprint against the principal's. A scope that does not lie within its key's window is refused
 * before anything is signed.
 */
import { createHash } from 'node:crypto';
import { errorText } from '../../core/error-text.js';
import { type RootFailure, scopeRootFailure, signerRootFailure, type TrustRoots } from '../../core/policy.js';
import { rootKeyId } from '../../core/root-signed-bytes.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, EXIT_REFUSED, type ExitCode, Refusal } from '../errors.js';
import type { CommandContext } from '../io.js';
import { openRootSigner } from '../root-key.js';
import {
  assertRootSchema,
  type RootableKey,
  type RootableScope,
  recordRootKey,
  rootableKeys,
  rootableScopes,
  setKeyRootSignature,
  setScopeRootSignature,
} from '../root-writes.js';
import { keyBytes, keySignedBy, scopeBytes, scopeSignedBy, windowNestError } from '../rooting.js';
import { verifySignature } from '../verify.js';

export type SignPendingOptions = {
  readonly rootKeyId: string;
  /** Roots whose valid signatures vouch for a row (loadTrustRoots). */
  readonly vouchingRoots: TrustRoots;
  readonly signUnvouched: boolean;
  readonly yes: boolean;
};

const fingerprint = (spkiDer: Buffer) => `sha256:${createHash('sha256').update(spkiDer).digest('hex')}`;

/** Why a row is not vouched for, or undefined when its signature verifies under a vouching root. */
function unvouchedWhy(failure: () => RootFailure | null): string | undefined {
  let f: RootFailure | null;
  try {
    f = failure();
  } catch (err) {
    return `unvouched: the row does not encode: ${errorText(err)}`;
  }
  if (f === null) return undefined;
  switch (f.kind) {
    case 'unsigned':
      return 'unvouched: unsigned';
    case 'unknown_root':
      return `unvouched: claims root ${f.rootKeyId}, not one you named`;
    case 'bad_signature':
      return `unvouched: claims root ${f.rootKeyId}, but its signature does not verify`;
  }
}

export async function rootSignPending(ctx: CommandContext, opts: SignPendingOptions): Promise<ExitCode> {
  const id = opts.rootKeyId;
  const target = databaseFromEnv(ctx.env);
  // Find the root before touching the registry: a wrong id or token is an error with nothing listed.
  const signer = openRootSigner(ctx.env, id);
  const roots = opts.vouchingRoots;
  try {
    return await withRegistry(target, (registry) =>
      registry.transaction(async (db) => {
        await assertRootSchema(db);
        const keys = (await rootableKeys(db))
          .filter((k) => !keySignedBy(k, id, signer.spkiDer))
          .map((k) => ({ row: k, why: unvouchedWhy(() => signerRootFailure(k, roots, verifySignature)) }));
        const scopes = (await rootableScopes(db))
          .filter((s) => !scopeSignedBy(s, id, signer.spkiDer))
          .map((s) => ({
            row: s,
            why: unvouchedWhy(() => scopeRootFailure(s, s.keySpkiDer, roots, verifySignature)),
          }));
        if (keys.length === 0 && scopes.length === 0) {
          ctx.io.out(`nothing to sign: every active key and scope row is signed by ${id}`);
          return EXIT_OK;
        }
        const keyLine = (k: RootableKey) =>
          `key ${k.keyId}, public key ${fingerprint(k.spkiDer)}, ${k.notBefore} .. ${k.notAfter}`;
        const scopeLine = (s: RootableScope) =>
          `scope ${s.id}: ${s.signingKeyId} -> ${s.destination}, ${s.notBefore} .. ${s.notAfter}`;
        const vouchedKeys = keys.filter((k) => k.why === undefined).map((k) => k.row);
        const vouchedScopes = scopes.filter((s) => s.why === undefined).map((s) => s.row);
        const unvouched = keys.length + scopes.length - vouchedKeys.length - vouchedScopes.length;
        ctx.io.out(`rows not signed by root ${id}:`);
        for (const k of keys) ctx.io.out(`  ${keyLine(k.row)} (${k.why ?? `vouched: ${k.row.rootKeyId}`})`);
        for (const s of scopes)
          ctx.io.out(`  ${scopeLine(s.row)} (${s.why ?? `vouched: ${s.row.rootKeyId}`})`);
        const toSignKeys = opts.signUnvouched ? keys.map((k) => k.row) : vouchedKeys;
        const toSignScopes = opts.signUnvouched ? scopes.map((s) => s.row) : vouchedScopes;
        if (unvouched > 0 && !opts.signUnvouched) {
          ctx.io.out(
            `${unvouched} unvouched rows will not be signed: no root given with --trust-root, --trust-root-file ` +
              'or --config signed them. Check each public key fingerprint with its principal, then sign them ' +
              'with --sign-unvouched',
          );
        }
        if (toSignKeys.length === 0 && toSignScopes.length === 0) {
          ctx.io.err('nothing signed');
          return EXIT_REFUSED;
        }
        const outside = toSignScopes.flatMap((s) => {
          const why = windowNestError(
            `scope ${s.id} (${s.signingKeyId} -> ${s.destination})`,
            s,
            `principal key ${s.signingKeyId}`,
            { notBefore: s.keyNotBefore, notAfter: s.keyNotAfter },
          );
          return why === undefined ? [] : [why];
        });
        if (outside.length > 0) {
          throw new Refusal(
            `${outside.join('; ')}: a root signs a scope only within its key's window; extend the key ` +
              '(register-principal-key.sh KEY_ID VALID_DAYS) or revoke the scope first. Nothing was signed',
          );
        }
        const count = toSignKeys.length + toSignScopes.length;
        const question = `sign these ${count} rows${opts.signUnvouched ? ', unvouched ones included,' : ''} with root ${id}? [y/N] `;
        if (!opts.yes && !((await ctx.io.confirm?.(question)) ?? false)) {
          ctx.io.err('nothing signed (answer was not yes; --yes skips the question)');
          return EXIT_REFUSED;
        }
        // The root's public key, for display next to the rows it signs (the gateway trusts its config).
        await recordRootKey(db, rootKeyId(signer.spkiDer), signer.spkiDer, null);
        for (const k of toSignKeys)
          await setKeyRootSignature(db, k.keyId, { rootKeyId: id, rootSignature: signer.sign(keyBytes(k)) });
        for (const s of toSignScopes)
          await setScopeRootSignature(db, s.id, { rootKeyId: id, rootSignature: signer.sign(scopeBytes(s)) });
        ctx.io.out(`signed ${toSignKeys.length} key and ${toSignScopes.length} scope rows with root ${id}`);
        return EXIT_OK;
      }),
    );
  } finally {
    signer.close();
  }
}
