/** migrate: apply the registry migrations this build ships (core/migrate.ts). */
import { errorText } from '../../core/error-text.js';
import { migrate } from '../../core/migrate.js';
import { asDatabaseError } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { CliError, EnvironmentError, EXIT_OK, type ExitCode } from '../errors.js';
import type { CommandContext } from '../io.js';

export async function migrateRegistry(ctx: CommandContext): Promise<ExitCode> {
  const target = databaseFromEnv(ctx.env);
  let applied: string[];
  try {
    applied = await migrate(target.url);
  } catch (err) {
    const mapped = asDatabaseError(target, err);
    if (mapped instanceof CliError) throw mapped;
    throw new EnvironmentError(`migrating database ${target.display} failed: ${errorText(err)}`, {
      cause: err,
    });
  }
  if (applied.length === 0) ctx.io.out(`database ${target.display}: up to date`);
  for (const name of applied) ctx.io.out(`database ${target.display}: applied ${name}`);
  return EXIT_OK;
}
