/**
 * The access-request subcommands of `agent-permissions` (docs/contract.md "Access requests"): requests,
 * approve, dismiss. Commander wiring only, like program.ts.
 */
import { type Command, Option } from 'commander';
import { parseDuration, parseLimit, parseValidDays, type Validity } from './args.js';
import { approveAllPending, approveRequest } from './commands/access-requests-approve.js';
import { dismissRequest } from './commands/access-requests-dismiss.js';
import { listRequests } from './commands/access-requests-list.js';
import { type ExitCode, UsageError } from './errors.js';
import type { CommandContext } from './io.js';

type ApproveFlags = {
  for?: string;
  days?: string;
  permissionId?: string;
  allPending?: boolean;
  identity?: string;
  yes?: boolean;
  newKey?: boolean;
};

export function addRequestCommands(
  permissions: Command,
  ctx: CommandContext,
  run: (fn: () => Promise<ExitCode>) => () => Promise<void>,
  environmentHelp: string,
): void {
  permissions
    .command('requests')
    .description(
      'List the access requests the gateway recorded for CONNECTs denied for want of a grant, most recent ' +
        'first: pending ones (default), or all with their decision.',
    )
    .addOption(new Option('--pending', 'only requests nobody has decided yet (default)').conflicts('all'))
    .addOption(new Option('--all', 'approved and dismissed requests too'))
    .option('--identity <ID>', 'only this agent identity')
    .option('--limit <N>', 'at most N rows', '1000')
    .option('--json', 'print JSON')
    .addHelpText('after', environmentHelp)
    .action((o: { all?: boolean; identity?: string; limit: string; json?: boolean }) =>
      run(() =>
        listRequests(ctx, {
          all: o.all === true,
          identity: o.identity,
          limit: parseLimit(o.limit),
          json: o.json === true,
        }),
      )(),
    );

  permissions
    .command('approve')
    .usage('REQUEST_ID KEY_ID [options]  |  --all-pending --identity ID KEY_ID [options]')
    .description(
      'Sign the permission an access request asks for (its identity, agent key and destination) with the TPM ' +
        'key of KEY_ID, exactly as grant does (refused unless the scope covers it and the gateway would honour ' +
        'it), and mark the request approved. With --all-pending: every pending request of one identity, listed ' +
        'and confirmed first, signed in one transaction.',
    )
    .argument('[REQUEST_ID]', 'request id (req-…), as the 403 and `requests` name it; not with --all-pending')
    .argument('[KEY_ID]', 'principal key that signs')
    .addOption(new Option('--for <DURATION>', 'validity from now: 30m, 1h, 12h, 2d').conflicts('days'))
    .option('--days <N>', 'validity from now in days (default 30, like grant)')
    .option('--permission-id <ID>', 'id of the permission row (default perm-<uuid>); as in grant')
    .addOption(
      new Option('--all-pending', 'approve every pending request of --identity').conflicts('permissionId'),
    )
    .option('--identity <ID>', 'with --all-pending: the agent identity')
    .option('--yes', 'with --all-pending: sign without asking')
    .option(
      '--new-key',
      'also sign for agent keys with no active permission under the identity (anyone can claim an identity: ' +
        "compare each key's fingerprint with the agent's first)",
    )
    .addHelpText('after', environmentHelp)
    .action((first: string | undefined, second: string | undefined, o: ApproveFlags) =>
      run(async () => {
        const validity: Validity =
          o.for !== undefined
            ? parseDuration(o.for)
            : { days: o.days === undefined ? 30 : parseValidDays(o.days, '--days') };
        if (o.allPending === true) {
          if (o.identity === undefined) throw new UsageError('--all-pending needs --identity ID');
          if (first === undefined || second !== undefined)
            throw new UsageError('--all-pending takes one argument, KEY_ID');
          return approveAllPending(ctx, {
            identity: o.identity,
            keyId: first,
            validity,
            yes: o.yes === true,
            newKey: o.newKey === true,
          });
        }
        if (o.identity !== undefined || o.yes === true)
          throw new UsageError('--identity and --yes go with --all-pending');
        if (first === undefined || second === undefined)
          throw new UsageError('approve needs REQUEST_ID and KEY_ID (or --all-pending --identity ID KEY_ID)');
        return approveRequest(ctx, {
          requestId: first,
          keyId: second,
          validity,
          permissionId: o.permissionId,
          newKey: o.newKey === true,
        });
      })(),
    );

  permissions
    .command('dismiss')
    .description(
      'Decline a pending access request; the gateway does not re-open it for [requests] dismiss_quiet_hours.',
    )
    .argument('<REQUEST_ID>', 'request id (req-…)')
    .addHelpText('after', environmentHelp)
    .action((requestId: string) => run(() => dismissRequest(ctx, { requestId }))());
}
