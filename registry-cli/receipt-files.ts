/**
 * Receipt files for `receipts show` and `receipts export`, which read but do not judge: every complete
 * line must decode (core/receipt-format.ts), else the command stops naming file:line; an incomplete last
 * line (a file still being written) is skipped with a warning. `receipts verify` judges instead
 * (core/receipt-chain.ts).
 */
import { readFileSync } from 'node:fs';
import { errorText } from '../core/error-text.js';
import type { Located } from '../core/receipt-chain.js';
import { decodeReceipt, type Receipt } from '../core/receipt-format.js';
import { UsageError } from './errors.js';
import type { Io } from './io.js';

/** Every record of the files, by gateway and seq. */
export function readReceiptFiles(names: readonly string[], io: Io): Located[] {
  const all: Located[] = [];
  for (const name of names) {
    let text: string;
    try {
      text = readFileSync(name, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read ${name}: ${errorText(err)}`, { cause: err });
    }
    const lines = text.split('\n');
    const last = lines.pop();
    if (last !== undefined && last !== '')
      io.err(`warning: ${name}:${lines.length + 1}: incomplete last line (no newline) skipped`);
    lines.forEach((raw, i) => {
      let receipt: Receipt;
      try {
        receipt = decodeReceipt(raw);
      } catch (err) {
        throw new UsageError(
          `${name}:${i + 1}: not a receipt: ${errorText(err)} (receipts verify says more)`,
        );
      }
      all.push({ file: name, line: i + 1, seq: receipt.seq, raw, receipt });
    });
  }
  return all.sort(
    (a, b) => a.receipt.gateway.localeCompare(b.receipt.gateway) || a.receipt.seq - b.receipt.seq,
  );
}
