/**
 * receipts verify FILES… --gateway-key PEM [--registry [URL] | --registry-dump FILE] [--allow-open-head]
 * [--allow-open-tail]
 * (docs/contract.md "Receipts", verifier reasons): the chains and checkpoint signatures
 * (core/receipt-chain.ts), then, with a registry or a dump, every allowed receipt's permission
 * (registry-cli/receipt-permissions.ts). Prints each problem as `<file>:<line> seq <n>: <reason>:
 * <detail>`, gaps and accepted findings as they come, and a summary; exit 0 only when everything holds.
 */
import { readFileSync } from 'node:fs';
import { p256PublicKey } from '../../core/ecdsa.js';
import { errorText } from '../../core/error-text.js';
import type { TrustRoots } from '../../core/policy.js';
import {
  type Finding,
  formatFinding,
  formatGap,
  type Located,
  type ReceiptFile,
  verifyReceiptChains,
} from '../../core/receipt-chain.js';
import type { TunnelReceipt } from '../../core/receipt-format.js';
import { readSpkiInput, spkiFingerprint } from '../../core/spki-input.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, EXIT_REFUSED, type ExitCode, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { checkReceiptPermission } from '../receipt-permissions.js';
import { dumpFromDatabase, dumpRows, parseRegistryDump, type RegistryDump } from '../registry-dump.js';

export type VerifyReceiptsOptions = {
  readonly files: readonly string[];
  readonly gatewayKey: string;
  /** true: the database of the environment; a string: that URL. */
  readonly registry?: string | true | undefined;
  readonly registryDump?: string | undefined;
  readonly allowOpenHead: boolean;
  readonly allowOpenTail: boolean;
  readonly roots: TrustRoots;
};

export async function verifyReceipts(ctx: CommandContext, opts: VerifyReceiptsOptions): Promise<ExitCode> {
  if (opts.registry !== undefined && opts.registryDump !== undefined)
    throw new UsageError('give --registry or --registry-dump, not both');
  let spkiDer: Buffer;
  try {
    spkiDer = readSpkiInput(opts.gatewayKey).spkiDer;
    p256PublicKey(spkiDer);
  } catch (err) {
    throw new UsageError(`--gateway-key ${opts.gatewayKey}: ${errorText(err)}`, { cause: err });
  }
  const key = { keyId: spkiFingerprint(spkiDer), publicKey: p256PublicKey(spkiDer) };
  const files: ReceiptFile[] = opts.files.map((name) => {
    try {
      return { name, bytes: readFileSync(name) };
    } catch (err) {
      throw new UsageError(`cannot read ${name}: ${errorText(err)}`, { cause: err });
    }
  });
  const dump = await loadRegistry(ctx, opts);

  const report = verifyReceiptChains(files, key, {
    allowOpenHead: opts.allowOpenHead,
    allowOpenTail: opts.allowOpenTail,
  });
  let problems = 0;
  for (const e of report.events) {
    if (e.type === 'gap') ctx.io.out(formatGap(e.gap));
    else if (e.type === 'accepted') ctx.io.out(`${formatFinding(e.finding)} (accepted: ${e.by})`);
    else {
      ctx.io.out(formatFinding(e.finding));
      problems += 1;
    }
  }
  if (dump === null) {
    ctx.io.out('note: permissions not checked (no --registry or --registry-dump)');
  } else {
    const rows = dumpRows(dump);
    const findings: Finding[] = [];
    for (const r of report.records) {
      if (r.receipt.kind !== 'tunnel') continue;
      const f = checkReceiptPermission(r as Located<TunnelReceipt>, rows, opts.roots);
      if (f !== null) findings.push(f);
    }
    for (const f of findings) ctx.io.out(formatFinding(f));
    problems += findings.length;
    ctx.io.out(
      `note: permissions checked against the registry as of ${dump.dumped_at} (schema ${dump.schema_version}), ` +
        (opts.roots.size === 0 ? 'no trust roots' : `trust roots ${[...opts.roots.keys()].join(', ')}`),
    );
  }
  ctx.io.out(
    `${report.lines} receipts in ${report.chains} chain${report.chains === 1 ? '' : 's'}: ` +
      (problems === 0 ? 'ok' : `${problems} problem${problems === 1 ? '' : 's'}`),
  );
  return problems === 0 ? EXIT_OK : EXIT_REFUSED;
}

async function loadRegistry(ctx: CommandContext, opts: VerifyReceiptsOptions): Promise<RegistryDump | null> {
  if (opts.registryDump !== undefined) {
    let text: string;
    try {
      text = readFileSync(opts.registryDump, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read --registry-dump ${opts.registryDump}: ${errorText(err)}`, {
        cause: err,
      });
    }
    return parseRegistryDump(text, opts.registryDump);
  }
  if (opts.registry === undefined) return null;
  const target = databaseFromEnv(
    opts.registry === true ? ctx.env : { AGENT_GATEWAY_DATABASE_URL: opts.registry },
  );
  return dumpFromDatabase(target);
}
