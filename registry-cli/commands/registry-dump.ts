/**
 * registry dump [--out FILE]: every row of the tables the policy reads, as one JSON document
 * (registry-cli/registry-dump.ts), for `receipts verify --registry-dump` where the auditor has no
 * database access. One read-only snapshot.
 */
import { writeFileSync } from 'node:fs';
import { errorText } from '../../core/error-text.js';
import { databaseFromEnv } from '../env.js';
import { EnvironmentError, EXIT_OK, type ExitCode } from '../errors.js';
import type { CommandContext } from '../io.js';
import { dumpFromDatabase } from '../registry-dump.js';

export async function dumpRegistry(
  ctx: CommandContext,
  opts: { readonly out?: string | undefined },
): Promise<ExitCode> {
  const target = databaseFromEnv(ctx.env);
  const dump = await dumpFromDatabase(target);
  const text = `${JSON.stringify(dump, null, 2)}\n`;
  if (opts.out === undefined) {
    ctx.io.out(text);
    return EXIT_OK;
  }
  try {
    writeFileSync(opts.out, text, { mode: 0o644 });
  } catch (err) {
    throw new EnvironmentError(`cannot write ${opts.out}: ${errorText(err)}`, { cause: err });
  }
  ctx.io.err(
    `wrote ${opts.out}: ${dump.principal_signing_keys.length} signing keys, ${dump.principal_key_permissions.length} scopes, ` +
      `${dump.permission_registry.length} permissions, as of ${dump.dumped_at}`,
  );
  return EXIT_OK;
}
