/**
 * receipts export FILES… --format ocsf [--out FILE] [filters as in show]: one OCSF Network Activity
 * event per tunnel receipt, one JSON object per line (core/receipt-ocsf.ts; docs/contract.md "Receipts",
 * OCSF mapping).
 */
import { writeFileSync } from 'node:fs';
import { errorText } from '../../core/error-text.js';
import { receiptToOcsf } from '../../core/receipt-ocsf.js';
import { EnvironmentError, EXIT_OK, type ExitCode, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { readReceiptFiles } from '../receipt-files.js';
import { filterTunnels, type ReceiptFilter } from './receipts-show.js';

export type ExportOptions = ReceiptFilter & {
  readonly files: readonly string[];
  readonly format: string;
  readonly out?: string | undefined;
};

export function exportReceipts(ctx: CommandContext, opts: ExportOptions): ExitCode {
  if (opts.format !== 'ocsf') throw new UsageError(`--format ${opts.format}: the only format is ocsf`);
  const tunnels = filterTunnels(readReceiptFiles(opts.files, ctx.io), opts);
  const text = tunnels.map((t) => `${JSON.stringify(receiptToOcsf(t.receipt))}\n`).join('');
  if (opts.out === undefined) {
    if (text !== '') ctx.io.out(text);
    return EXIT_OK;
  }
  try {
    writeFileSync(opts.out, text);
  } catch (err) {
    throw new EnvironmentError(`cannot write ${opts.out}: ${errorText(err)}`, { cause: err });
  }
  ctx.io.err(`wrote ${tunnels.length} OCSF event(s) to ${opts.out}`);
  return EXIT_OK;
}
