/**
 * root-withdraw --key KEY_ID | --scope SCOPE_ID: clear a row's root signature (root_key_id and
 * root_signature). With trust roots configured the gateway then denies what the row authorized
 * (signer_not_rooted / scope_not_rooted), and live tunnels are re-checked through the registry's change
 * notification (docs/contract.md "Root of trust"). A revoked row stays as it is: revocation is final.
 */
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, Refusal, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import {
  assertRootSchema,
  rootableKeys,
  rootableScopes,
  setKeyRootSignature,
  setScopeRootSignature,
  UNROOTED,
} from '../root-writes.js';

export type WithdrawOptions = { readonly keyId?: string | undefined; readonly scopeId?: string | undefined };

export async function rootWithdraw(ctx: CommandContext, opts: WithdrawOptions): Promise<ExitCode> {
  if ((opts.keyId === undefined) === (opts.scopeId === undefined))
    throw new UsageError('give exactly one of --key KEY_ID and --scope SCOPE_ID');
  if (opts.scopeId !== undefined && !/^\d{1,18}$/.test(opts.scopeId))
    throw new UsageError(
      `--scope must be a scope row id (a number, as root-sign-pending.sh lists), got ${JSON.stringify(opts.scopeId)}`,
    );
  const target = databaseFromEnv(ctx.env);
  const outcome = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      await assertRootSchema(db);
      if (opts.keyId !== undefined) {
        const [key] = await rootableKeys(db, opts.keyId);
        if (key === undefined) throw new Refusal(`principal key ${opts.keyId} is not registered`);
        if (key.rootKeyId === null) return `principal key ${key.keyId} carries no root signature`;
        await setKeyRootSignature(db, key.keyId, UNROOTED);
        return `withdrew the signature of root ${key.rootKeyId} from principal key ${key.keyId}`;
      }
      const [scope] = await rootableScopes(db, opts.scopeId);
      if (scope === undefined) throw new Refusal(`no scope row ${opts.scopeId}`);
      const name = `scope ${scope.id} (${scope.signingKeyId} -> ${scope.destination})`;
      if (scope.rootKeyId === null) return `${name} carries no root signature`;
      await setScopeRootSignature(db, scope.id, UNROOTED);
      return `withdrew the signature of root ${scope.rootKeyId} from ${name}`;
    }),
  );
  // Nothing to withdraw still leaves the row as asked: unrooted.
  if (outcome.startsWith('withdrew')) ctx.io.out(outcome);
  else ctx.io.err(`note: ${outcome}; nothing changed`);
  return EXIT_OK;
}
