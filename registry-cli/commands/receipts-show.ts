/**
 * receipts show FILES… [--identity ID] [--destination DEST] [--since TIME] [--until TIME]: the tunnel
 * receipts as a table (docs/contract.md "Receipts"). Reads, does not judge: `receipts verify` does.
 */
import { normalizeDestination } from '../../core/destination.js';
import type { Located } from '../../core/receipt-chain.js';
import type { TunnelReceipt } from '../../core/receipt-format.js';
import { type Micros, parseTimestamp } from '../../core/timestamp.js';
import { EXIT_OK, type ExitCode, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { readReceiptFiles } from '../receipt-files.js';

export type ReceiptFilter = {
  readonly identity?: string | undefined;
  readonly destination?: string | undefined;
  readonly since?: string | undefined;
  readonly until?: string | undefined;
};

export type ShowOptions = ReceiptFilter & { readonly files: readonly string[] };

const COLUMNS = [
  'time',
  'gateway',
  'seq',
  'identity',
  'destination',
  'decision',
  'bytes up/down',
  'duration',
  'end reason',
];

export function showReceipts(ctx: CommandContext, opts: ShowOptions): ExitCode {
  const all = readReceiptFiles(opts.files, ctx.io);
  const tunnels = filterTunnels(all, opts);
  const rows = tunnels.map(({ receipt: r }) => [
    r.opened,
    r.gateway,
    String(r.seq),
    r.source_identity ?? '-',
    r.destination ?? r.authority,
    r.decision === 'deny' ? `deny (${r.deny_reason})` : r.decision,
    `${r.bytes_up}/${r.bytes_down}`,
    `${(r.duration_us / 1e6).toFixed(3)}s`,
    r.end_reason === null ? '-' : r.end_detail === null ? r.end_reason : `${r.end_reason} (${r.end_detail})`,
  ]);
  const widths = COLUMNS.map((c, i) => Math.max(c.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  const out = [line(COLUMNS), ...rows.map(line)];
  const gaps = all.filter((x) => x.receipt.kind === 'gap').length;
  out.push(
    `${tunnels.length} tunnel receipt${tunnels.length === 1 ? '' : 's'}${gaps > 0 ? `; ${gaps} gap record(s) in the files (receipts verify names them)` : ''}`,
  );
  ctx.io.out(out.join('\n'));
  return EXIT_OK;
}

/** The tunnel records that pass the filter; time bounds are on `opened`, since inclusive, until exclusive. */
export function filterTunnels(all: readonly Located[], f: ReceiptFilter): Located<TunnelReceipt>[] {
  const destination =
    f.destination === undefined ? undefined : normalizeDestination(f.destination).normalized;
  const since = f.since === undefined ? undefined : parseTime(f.since, '--since');
  const until = f.until === undefined ? undefined : parseTime(f.until, '--until');
  return all.filter((x): x is Located<TunnelReceipt> => {
    const r = x.receipt;
    if (r.kind !== 'tunnel') return false;
    if (f.identity !== undefined && r.source_identity !== f.identity) return false;
    if (destination !== undefined && r.destination !== destination) return false;
    const opened = parseTimestamp(r.opened);
    if (since !== undefined && opened < since) return false;
    if (until !== undefined && opened >= until) return false;
    return true;
  });
}

/** A canonical timestamp, or anything Date.parse reads with a zone (RFC 3339, `2026-03-01`). */
function parseTime(text: string, flag: string): Micros {
  try {
    return parseTimestamp(text);
  } catch {
    const ms = Date.parse(text);
    if (Number.isNaN(ms))
      throw new UsageError(`${flag} ${JSON.stringify(text)} is not a time (e.g. 2026-03-01T10:00:00Z)`);
    return BigInt(ms) * 1000n;
  }
}
