/**
 * The receipt commands of the registry CLI (docs/contract.md "Receipts"): receipts verify / show /
 * export, and registry dump, which verify reads offline. Commander wiring only, like program.ts.
 */
import { type Command, Option } from 'commander';
import { exportReceipts } from './commands/receipts-export.js';
import { showReceipts } from './commands/receipts-show.js';
import { verifyReceipts } from './commands/receipts-verify.js';
import { dumpRegistry } from './commands/registry-dump.js';
import type { ExitCode } from './errors.js';
import type { CommandContext } from './io.js';
import { withTrustRootOptions } from './program-root.js';
import { loadTrustRoots, type TrustRootArgs } from './trust-roots.js';

const VERIFY_HELP = `
Exit status: 0 every receipt holds; 1 a problem was found (each printed as
  <file>:<line> seq <n>: <reason>: <detail>); 2 usage or environment error.
Reasons: bad_json, not_canonical, seq_break, chain_break, bad_signature, unknown_key, unsigned,
  torn_line, open_head, open_end, empty_file, no_records, permission_missing, permission_mismatch,
  permission_signature_invalid, not_authorized_then (docs/contract.md "Receipts"). Gap records print as
  "gap:" lines: named, not failures. A chain must start at its first record ever and end in a stop
  checkpoint; removing whole runs after a stop cannot be seen in the files: compare the last seq with the
  gateway's agent_gateway_receipts_last_seq.`;

type Filters = { identity?: string; destination?: string; since?: string; until?: string };

function withFilters(command: Command): Command {
  return command
    .option('--identity <ID>', 'only receipts of this source identity')
    .option('--destination <DEST>', 'only receipts for this destination (host[:port], port 443 by default)')
    .option('--since <TIME>', 'only tunnels opened at or after TIME (RFC 3339, e.g. 2026-03-01T10:00:00Z)')
    .option('--until <TIME>', 'only tunnels opened before TIME');
}

export function addReceiptCommands(
  program: Command,
  ctx: CommandContext,
  run: (fn: () => Promise<ExitCode>) => () => Promise<void>,
  environmentHelp: string,
): void {
  const receipts = program
    .command('receipts')
    .description("Verify, show and export the gateway's tunnel receipts (signed, hash-chained JSONL files).");

  withTrustRootOptions(
    receipts
      .command('verify')
      .description(
        'Check receipt files offline: every line canonical, each chain unbroken (seq, prev), every checkpoint ' +
          "signed by the gateway's receipt key and every record covered by one; with --registry or " +
          "--registry-dump, that every allowed tunnel's permission row exists with the recorded bytes and " +
          "signature and that the gateway's policy allowed it when the tunnel opened.",
      )
      .argument('<FILES...>', 'receipt files (any order; several gateways may be mixed)')
      .requiredOption(
        '--gateway-key <PEM>',
        "the gateway's receipt public key (agent_gateway receipts-key prints it)",
      )
      .option(
        '--registry [URL]',
        'check permissions against this registry (postgresql:// URL; without URL: AGENT_GATEWAY_DATABASE_URL)',
      )
      .option('--registry-dump <FILE>', 'check permissions against a `registry dump` file')
      .option(
        '--allow-open-head',
        "accept a chain that starts after its first record (open_head, still printed): a slice of a chain's files",
      )
      .option(
        '--allow-open-tail',
        'accept records after the last valid checkpoint of a chain that has one, and a chain ending at a ' +
          'checkpoint other than stop (unsigned, open_end, still printed): a gateway still writing',
      ),
    'judge permissions with this root',
  )
    .addHelpText('after', VERIFY_HELP + environmentHelp)
    .action(
      (
        files: string[],
        o: TrustRootArgs & {
          gatewayKey: string;
          registry?: string | true;
          registryDump?: string;
          allowOpenHead?: boolean;
          allowOpenTail?: boolean;
        },
      ) =>
        run(() =>
          verifyReceipts(ctx, {
            files,
            gatewayKey: o.gatewayKey,
            registry: o.registry,
            registryDump: o.registryDump,
            allowOpenHead: o.allowOpenHead === true,
            allowOpenTail: o.allowOpenTail === true,
            roots: loadTrustRoots(o),
          }),
        )(),
    );

  withFilters(
    receipts
      .command('show')
      .description('Print tunnel receipts as a table, by gateway and seq (reads; verify judges).')
      .argument('<FILES...>', 'receipt files'),
  ).action((files: string[], o: Filters) => run(async () => showReceipts(ctx, { files, ...o }))());

  withFilters(
    receipts
      .command('export')
      .description(
        'Write tunnel receipts as OCSF 1.3.0 Network Activity (class 4001) events, one JSON per line.',
      )
      .argument('<FILES...>', 'receipt files')
      .addOption(new Option('--format <FORMAT>', 'output format').choices(['ocsf']).makeOptionMandatory())
      .option('--out <FILE>', 'write to FILE instead of stdout'),
  ).action((files: string[], o: Filters & { format: string; out?: string }) =>
    run(async () => exportReceipts(ctx, { files, ...o }))(),
  );

  program
    .command('registry')
    .description('Registry-wide operations.')
    .command('dump')
    .description(
      'Write every principal key, scope and permission row (timestamps as canonical text, bytea as hex) as ' +
        'one JSON document, for `receipts verify --registry-dump` without database access.',
    )
    .option('--out <FILE>', 'write to FILE instead of stdout')
    .addHelpText('after', environmentHelp)
    .action((o: { out?: string }) => run(() => dumpRegistry(ctx, { out: o.out }))());
}
