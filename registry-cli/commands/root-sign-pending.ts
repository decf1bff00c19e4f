/**
 * root-sign-pending --root-key ID [--trust-root B64 | --trust-root-file PEM | --config FILE]...
 * [--sign-unvouched] [--yes]: sign the active key and scope rows that carry no valid signature by root
 * ID (docs/contract.md "Root of trust").
 *
 * What the registry says about a row is not evidence: a `root_key_id` column can be written by anyone
 * who can write the table. So a row is re-signed only when its current signature verifies under a root
 * the operator names (--trust-root and friends, as `check` reads them: the old root during a rotation).
 * A row never signed is "unvouched": it is listed with its key's public-key fingerprint and signed
 * only with --sign-unvouched, for the first migration onto a root, after the operator has checked each
 * fingerprint against the principal's. Anything else (a root not named, a signature that does not
 * verify, a scope a revocation takes away) is never signed here. A scope that does not lie within its
 * key's window is refused before anything is signed.
 */
import { errorText } from '../../core/error-text.js';
import { type RootFailure, scopeRootFailure, signerRootFailure, type TrustRoots } from '../../core/policy.js';
import { rootKeyId } from '../../core/root-signed-bytes.js';
import { spkiFingerprint } from '../../core/spki-input.js';
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

const fingerprint = (spkiDer: Buffer) => `sha256:${spkiFingerprint(spkiDer)}`;

/**
 * What root-sign-pending does with a row: sign it (its signature verifies under a root the operator
 * named), sign it only with --sign-unvouched (an unsigned row), or never. Never: a signature that
 * claims a root not named (name it, or root-withdraw the row), one that claims a root and does not verify (a copy from another row, or a row changed after signing; if it is genuine, root-withdraw
 * it and check it like any unsigned row), a row with no canonical bytes, and a scope a revoked row of
 * its delegation takes away (signing it anew would undo that revocation).
 */
type Verdict =
  | { readonly kind: 'vouched'; readonly text: string }
  | { readonly kind: 'unvouched'; readonly text: string }
  | { readonly kind: 'never'; readonly text: string };

function verdict(row: RootMarkText, failure: () => RootFailure | null, revoked = false): Verdict {
  if (revoked)
    return { kind: 'never', text: 'not signed: a revoked scope of this key and destination takes it away' };
  let f: RootFailure | null;
  try {
    f = failure();
  } catch (err) {
    return { kind: 'never', text: `not signed: the row does not encode: ${errorText(err)}` };
  }
  if (f === null) return { kind: 'vouched', text: `vouched: ${row.rootKeyId}` };
  switch (f.kind) {
    case 'unsigned':
      return { kind: 'unvouched', text: 'unvouched: unsigned' };
    case 'unknown_root':
      return {
        kind: 'never',
        text: `not signed: claims root ${f.rootKeyId}, not one you named (name it to re-sign what it signed)`,
      };
    case 'bad_signature':
      return {
        kind: 'never',
        text: `not signed: claims root ${f.rootKeyId}, but its signature does not verify`,
      };
  }
}
type RootMarkText = { readonly rootKeyId: string | null };

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
          .map((k) => ({ row: k, v: verdict(k, () => signerRootFailure(k, roots, verifySignature)) }));
        const scopes = (await rootableScopes(db))
          .filter((s) => !scopeSignedBy(s, id, signer.spkiDer))
          .map((s) => ({
            row: s,
            v: verdict(
              s,
              () => scopeRootFailure(s, s.keySpkiDer, roots, verifySignature),
              s.revokedDelegation,
            ),
          }));
        if (keys.length === 0 && scopes.length === 0) {
          ctx.io.out(`nothing to sign: every active key and scope row is signed by ${id}`);
          return EXIT_OK;
        }
        const keyLine = (k: RootableKey) =>
          `key ${k.keyId}, public key ${fingerprint(k.spkiDer)}, ${k.notBefore} .. ${k.notAfter}`;
        const scopeLine = (s: RootableScope) =>
          `scope ${s.id}: ${s.signingKeyId} -> ${s.destination}, key ${fingerprint(s.keySpkiDer)}, ` +
          `${s.notBefore} .. ${s.notAfter}`;
        const signs = (v: Verdict) => v.kind === 'vouched' || (opts.signUnvouched && v.kind === 'unvouched');
        ctx.io.out(`rows not signed by root ${id}:`);
        for (const k of keys) ctx.io.out(`  ${keyLine(k.row)} (${k.v.text})`);
        for (const s of scopes) ctx.io.out(`  ${scopeLine(s.row)} (${s.v.text})`);
        const toSignKeys = keys.filter((k) => signs(k.v)).map((k) => k.row);
        const toSignScopes = scopes.filter((s) => signs(s.v)).map((s) => s.row);
        const count = (kind: Verdict['kind']) =>
          keys.filter((k) => k.v.kind === kind).length + scopes.filter((s) => s.v.kind === kind).length;
        if (count('unvouched') > 0 && !opts.signUnvouched) {
          ctx.io.out(
            `${count('unvouched')} unvouched rows will not be signed: no root given with --trust-root, --trust-root-file ` +
              'or --config signed them. Check each public key fingerprint with its principal, then sign them ' +
              'with --sign-unvouched',
          );
        }
        if (count('never') > 0)
          ctx.io.out(`${count('never')} rows are never signed by this command (see above)`);
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
        const total = toSignKeys.length + toSignScopes.length;
        const question = `sign these ${total} rows${opts.signUnvouched ? ', unvouched ones included,' : ''} with root ${id}? [y/N] `;
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
