/**
 * root-sign-pending --root-key ID [--yes]: list the active key and scope rows that carry no valid
 * signature by root ID (never signed, signed by another root, or signed before their window changed),
 * ask, and sign them all in one transaction. Migrates an existing registry onto a root, and re-signs
 * everything with the new root during a rotation (docs/contract.md "Root of trust"). A scope that does
 * not lie within its key's window is refused before anything is signed.
 */
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

export type SignPendingOptions = { readonly rootKeyId: string; readonly yes: boolean };

const markText = (m: RootableKey | RootableScope) =>
  m.rootKeyId === null ? 'unsigned' : `signed by ${m.rootKeyId}`;

export async function rootSignPending(ctx: CommandContext, opts: SignPendingOptions): Promise<ExitCode> {
  const id = opts.rootKeyId;
  const target = databaseFromEnv(ctx.env);
  // Find the root before touching the registry: a wrong id or token is an error with nothing listed.
  const signer = openRootSigner(ctx.env, id);
  try {
    return await withRegistry(target, (registry) =>
      registry.transaction(async (db) => {
        await assertRootSchema(db);
        const keys = (await rootableKeys(db)).filter((k) => !keySignedBy(k, id, signer.spkiDer));
        const scopes = (await rootableScopes(db)).filter((s) => !scopeSignedBy(s, id, signer.spkiDer));
        if (keys.length === 0 && scopes.length === 0) {
          ctx.io.out(`nothing to sign: every active key and scope row is signed by ${id}`);
          return EXIT_OK;
        }
        ctx.io.out(`rows not signed by root ${id}:`);
        for (const k of keys)
          ctx.io.out(`  key ${k.keyId}, ${k.notBefore} .. ${k.notAfter} (${markText(k)})`);
        for (const s of scopes) {
          ctx.io.out(
            `  scope ${s.id}: ${s.signingKeyId} -> ${s.destination}, ${s.notBefore} .. ${s.notAfter} (${markText(s)})`,
          );
        }
        const outside = scopes.flatMap((s) => {
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
        const question = `sign these ${keys.length + scopes.length} rows with root ${id}? [y/N] `;
        if (!opts.yes && !((await ctx.io.confirm?.(question)) ?? false)) {
          ctx.io.err('nothing signed (answer was not yes; --yes skips the question)');
          return EXIT_REFUSED;
        }
        // The root's public key, for display next to the rows it signs (the gateway trusts its config).
        await recordRootKey(db, rootKeyId(signer.spkiDer), signer.spkiDer, null);
        for (const k of keys)
          await setKeyRootSignature(db, k.keyId, { rootKeyId: id, rootSignature: signer.sign(keyBytes(k)) });
        for (const s of scopes)
          await setScopeRootSignature(db, s.id, { rootKeyId: id, rootSignature: signer.sign(scopeBytes(s)) });
        ctx.io.out(`signed ${keys.length} key and ${scopes.length} scope rows with root ${id}`);
        return EXIT_OK;
      }),
    );
  } finally {
    signer.close();
  }
}
