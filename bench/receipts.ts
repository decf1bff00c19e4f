/**
 * The receipts figure of `npm run bench` (issue #17; bench/README.md "Receipts on and off"): line (c)'s
 * gateway started three more times, identical but for `[receipts]` — off, on with a PEM key and the
 * default checkpoints, on with `checkpoint_receipts = 1` (one signature per receipt) — and measured for
 * CPU per CONNECT (sequential CONNECT → 200 → close, each a receipt) and CPU per GiB (one tunnel, bulk).
 * Plus the raw cost of one checkpoint signature: node:crypto with a PEM key, and PKCS#11 in swtpm.
 * run.ts runs the gateways (it owns the load client); this module has what is specific to receipts.
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { missingTpmTools, startSwtpm } from '../dev-support/swtpm.js';
import { openSigner } from '../pkcs11/signer.js';
import { type Spread, show, spread, table } from './support/stats.js';

export type ReceiptsLineId = 'r-off' | 'r-pem' | 'r-pem1';

export const RECEIPTS_LINES: readonly { readonly id: ReceiptsLineId; readonly label: string }[] = [
  { id: 'r-off', label: '(c) gateway, receipts off' },
  { id: 'r-pem', label: '(c) gateway, receipts on (PEM key, checkpoints)' },
  { id: 'r-pem1', label: '(c) gateway, receipts on, checkpoint_receipts = 1' },
];

/** The `[receipts]` section of a line (empty for off); the key is written to `work` once. */
export function receiptsToml(id: ReceiptsLineId, work: string): { toml: string; dir: string | undefined } {
  if (id === 'r-off') return { toml: '', dir: undefined };
  const keyPath = path.join(work, 'receipts.key');
  if (!existsSync(keyPath)) {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    writeFileSync(keyPath, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  }
  const dir = path.join(work, `receipts-${id}`);
  const lines = [
    '',
    '[receipts]',
    'enabled = true',
    `path = "${dir}"`,
    `instance_id = "bench-${id}"`,
    `signing_key = "${keyPath}"`,
  ];
  if (id === 'r-pem1') lines.push('checkpoint_receipts = 1');
  return { toml: `${lines.join('\n')}\n`, dir };
}

/** Bytes and tunnel receipts the receipts directory holds (every file of every gateway id under it). */
export function receiptFiles(dir: string): { bytes: number; tunnels: number } {
  let bytes = 0;
  let tunnels = 0;
  for (const id of readdirSync(dir)) {
    for (const name of readdirSync(path.join(dir, id))) {
      // Small enough to read whole: a bench run writes a few MiB of receipts at most.
      const text = readFileSync(path.join(dir, id, name), 'utf8');
      bytes += Buffer.byteLength(text);
      tunnels += text.split('\n').filter((l) => l.includes('"kind":"tunnel"')).length;
    }
  }
  return { bytes, tunnels };
}

export type SigningCost = {
  pemUs: Spread | undefined;
  tpmUs: Spread | undefined;
  tpmNote: string | undefined;
};

/** Microseconds per ECDSA P-256 signature over a checkpoint-sized message: PEM key, then swtpm. */
export async function signingCost(pemOps = 2000, tpmOps = 50): Promise<SigningCost> {
  const message = Buffer.alloc(260, 0x61);
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const pem: number[] = [];
  for (let round = 0; round < 5; round++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < pemOps; i++) sign('sha256', message, { key: privateKey, dsaEncoding: 'der' });
    pem.push(Number(process.hrtime.bigint() - t0) / 1000 / pemOps);
  }
  const missing = missingTpmTools();
  if (missing !== undefined) return { pemUs: spread(pem), tpmUs: undefined, tpmNote: missing };
  const tpm = await startSwtpm();
  try {
    Object.assign(process.env, tpm.env);
    const signer = openSigner({
      modulePath: tpm.env.TPM2_PKCS11_MODULE,
      store: tpm.env.TPM2_PKCS11_STORE,
      tokenLabel: 'agw-bench-receipts',
      keyLabel: 'receipts',
      userPin: 'bench-user-pin-1234',
      soPin: 'bench-so-pin-5678',
      create: true,
    });
    try {
      signer.sign(message);
      const tpmSamples: number[] = [];
      for (let i = 0; i < tpmOps; i++) {
        const t0 = process.hrtime.bigint();
        signer.sign(message);
        tpmSamples.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      return { pemUs: spread(pem), tpmUs: spread(tpmSamples), tpmNote: undefined };
    } finally {
      signer.close();
    }
  } catch (err) {
    return { pemUs: spread(pem), tpmUs: undefined, tpmNote: (err as Error).message.split('\n')[0] };
  } finally {
    await tpm.stop();
  }
}

export type ReceiptsRow = {
  readonly label: string;
  readonly cpuUsPerConnect: Spread | undefined;
  readonly connectP50Us: Spread | undefined;
  readonly cpuPerGiBUp: Spread | undefined;
  readonly cpuPerGiBDown: Spread | undefined;
  readonly bytesPerReceipt: number | undefined;
  readonly notMeasured: string | undefined;
};

/** The "Receipts on and off" table and the signing cost under it. */
export function receiptsReport(
  rows: readonly ReceiptsRow[],
  cost: SigningCost | undefined,
  count: number,
): string {
  const off = rows[0]?.cpuUsPerConnect?.median;
  const extra = (r: ReceiptsRow) => {
    const on = r.cpuUsPerConnect?.median;
    if (off === undefined || on === undefined || r === rows[0]) return '–';
    // At 1,000 tunnels/s, CPU-µs per CONNECT × 1,000 = µs of CPU per second: share of one core.
    return `${(on - off).toFixed(0)} µs (${((((on - off) * 1000) / 1e6) * 100).toFixed(1)} % of a core)`;
  };
  const out = [
    `Receipts on and off: line (c) restarted with each [receipts] setting. CPU per CONNECT = gateway CPU over ` +
      `${count} sequential CONNECT→200→close (each one tunnel and one receipt) and the 1.5 s after (flush, ` +
      'checkpoint), divided by the CONNECTs; CPU per GiB = one tunnel moving the single-tunnel bytes.',
    '',
    table(
      [
        'line',
        'CPU-µs/CONNECT',
        'extra vs off (at 1,000 tunnels/s)',
        'CONNECT p50 µs',
        'CPU-s/GiB up',
        'CPU-s/GiB down',
        'bytes/receipt',
      ],
      rows.map((r) =>
        r.notMeasured !== undefined
          ? [r.label, `not measured: ${r.notMeasured}`, '', '', '', '', '']
          : [
              r.label,
              show(r.cpuUsPerConnect),
              extra(r),
              show(r.connectP50Us),
              show(r.cpuPerGiBUp, 2),
              show(r.cpuPerGiBDown, 2),
              r.bytesPerReceipt === undefined ? '–' : r.bytesPerReceipt.toFixed(0),
            ],
      ),
    ),
  ];
  if (cost !== undefined) {
    out.push(
      '',
      `Raw signing cost, µs per ECDSA P-256 signature of a checkpoint: PEM key (node:crypto) ${show(cost.pemUs, 1)}; ` +
        (cost.tpmUs !== undefined
          ? `PKCS#11 key in swtpm (tpm2-pkcs11, tpm2-abrmd) ${show(cost.tpmUs, 0)}.`
          : `PKCS#11 in swtpm not measured: ${cost.tpmNote}.`),
    );
  }
  return out.join('\n');
}
