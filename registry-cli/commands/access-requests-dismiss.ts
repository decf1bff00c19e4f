/**
 * agent-permissions dismiss REQUEST_ID: a principal declines a pending access request. The gateway does not
 * re-open it for `[requests] dismiss_quiet_hours` after this (docs/contract.md "Access requests").
 */
import { assertAccessRequestSchema, markDismissed, readAccessRequest } from '../access-request-writes.js';
import { parseRequestId } from '../args.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, Refusal } from '../errors.js';
import type { CommandContext } from '../io.js';
import { visible } from './access-requests-list.js';

export async function dismissRequest(ctx: CommandContext, opts: { requestId: string }): Promise<ExitCode> {
  const requestId = parseRequestId(opts.requestId);
  const target = databaseFromEnv(ctx.env);
  const dismissed = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      await assertAccessRequestSchema(db);
      const row = await markDismissed(db, requestId);
      if (row !== undefined) return row;
      const current = await readAccessRequest(db, requestId);
      if (current === undefined) throw new Refusal(`no access request ${requestId}`);
      throw new Refusal(
        `access request ${requestId} is ${current.status} (at ${current.decidedAt}), not pending`,
      );
    }),
  );
  ctx.io.out(
    `dismissed ${requestId}: ${visible(dismissed.subjectIdentity)} -> ${dismissed.destination} at ${dismissed.decidedAt}`,
  );
  return EXIT_OK;
}
