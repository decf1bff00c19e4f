// Shared by the receipt-log tests: a real PEM key, a real directory, a log opened on them, and the
// files read back through the real decoder (core/receipt-format.ts).

import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach } from 'vitest';
import {
  type CheckpointReceipt,
  checkpointSignedBytes,
  decodeReceipt,
  type GapReceipt,
  GENESIS_PREV,
  type Receipt,
  receiptHash,
  type Unchained,
} from '../../core/receipt-format.js';
import { createGatewayMetrics, type GatewayMetrics } from '../../gateway/metrics.js';
import { ReceiptLog, type ReceiptLogOptions } from '../../gateway/receipts/receipt-log.js';
import { openReceiptSigner } from '../../gateway/receipts/receipt-signer.js';
import type { AuthorizationLogger } from '../../gateway/registry-errors.js';

export type Fixture = {
  readonly root: string;
  readonly dir: string;
  readonly keyPath: string;
  readonly metrics: GatewayMetrics;
  readonly logged: { level: string; msg: string; obj: object }[];
  readonly logger: AuthorizationLogger;
  open(overrides?: Partial<ReceiptLogOptions>): Promise<ReceiptLog>;
};

export function fixture(): Fixture {
  const root = mkdtempSync(path.join(os.tmpdir(), 'agw-receipt-log-'));
  const keyPath = path.join(root, 'receipts-key.pem');
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeFileSync(keyPath, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const metrics = createGatewayMetrics({ defaultMetrics: false });
  const logged: Fixture['logged'] = [];
  const at = (level: string) => (obj: object, msg: string) => logged.push({ level, msg, obj });
  const logger = { info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug') };
  const dir = path.join(root, 'receipts', 'gw-test');
  return {
    root,
    dir,
    keyPath,
    metrics,
    logged,
    logger,
    async open(overrides = {}) {
      return ReceiptLog.open({
        dir,
        gatewayId: 'gw-test',
        signer: await openReceiptSigner(keyPath),
        checkpointReceipts: 1000,
        checkpointIntervalMs: 60_000,
        fsyncIntervalMs: 1000,
        rotateBytes: 64 * 1024 * 1024,
        rotateIntervalMs: 86_400_000,
        maxQueued: 100_000,
        metrics,
        logger,
        ...overrides,
      });
    },
  };
}

/** A fixture maker for one test file; every fixture it made is removed after each test. */
export function fixturesRemovedAfterEach(): () => Fixture {
  const made: Fixture[] = [];
  afterEach(async () => {
    for (const f of made.splice(0)) await rm(f.root, { recursive: true, force: true });
  });
  return () => {
    const f = fixture();
    made.push(f);
    return f;
  };
}

/** A record whose `detail` tells the test which one it is. */
export function record(n: number): Unchained<GapReceipt> {
  return {
    v: 1,
    kind: 'gap',
    at: '2025-01-01T00:00:00.000000Z',
    reason: 'dropped',
    lost_receipts: 0,
    lost_bytes: 0,
    detail: `record ${n}`,
  };
}

export type OnDisk = { readonly file: string; readonly line: string; readonly r: Receipt };

/** Every record of `dir` in file order, decoded. */
export function readAll(dir: string): OnDisk[] {
  const out: OnDisk[] = [];
  for (const file of readdirSync(dir)
    .filter((n) => /^receipts-\d{12}\.jsonl$/.test(n))
    .sort()) {
    const text = readFileSync(path.join(dir, file), 'utf8');
    if (text !== '' && !text.endsWith('\n')) throw new Error(`${file} does not end in a newline`);
    for (const line of text.split('\n').filter((l) => l !== ''))
      out.push({ file, line, r: decodeReceipt(line) });
  }
  return out;
}

/** Problems with the chain (seq, prev) and checkpoint signatures under the fixture's key; [] = none. */
export function chainProblems(records: readonly OnDisk[], spkiPem: string): string[] {
  const problems: string[] = [];
  let prev = GENESIS_PREV;
  let seq = 0;
  for (const { line, r } of records) {
    if (r.seq !== seq + 1) problems.push(`seq ${r.seq} after ${seq}`);
    if (r.prev !== prev) problems.push(`seq ${r.seq}: prev does not match`);
    if (r.kind === 'checkpoint') {
      const { sig, ...body } = r as CheckpointReceipt;
      if (
        !verify(
          'sha256',
          checkpointSignedBytes(body),
          { key: spkiPem, dsaEncoding: 'der' },
          Buffer.from(sig, 'base64'),
        )
      )
        problems.push(`seq ${r.seq}: signature does not verify`);
    }
    seq = r.seq;
    prev = receiptHash(line);
  }
  return problems;
}

export function publicPem(keyPath: string): string {
  return createPublicKey(readFileSync(keyPath)).export({ type: 'spki', format: 'pem' }).toString();
}

/** Resolves once `check` holds (polled), or throws after `ms`. */
export async function until(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 10));
  }
}

export function details(records: readonly OnDisk[]): string[] {
  return records.filter((x) => x.r.kind === 'gap').map((x) => (x.r as GapReceipt).detail);
}
