/**
 * Receipt lines chained from a chain position but not yet on disk (gateway/receipts/receipt-log.ts):
 * the writer builds a batch here and moves its position only once the batch is written, so a failed
 * write is re-chained (and its checkpoints re-signed) on the retry.
 */
import {
  type CheckpointReceipt,
  checkpointSignedBytes,
  encodeReceipt,
  type GapReceipt,
  RECEIPT_FORMAT_VERSION,
  type Receipt,
  receiptHash,
  type TunnelReceipt,
  type Unchained,
} from '../../core/receipt-format.js';
import type { ReceiptSigner } from './receipt-signer.js';
import { receiptTime } from './receipt-time.js';

export type Pending = Unchained<TunnelReceipt> | Unchained<GapReceipt>;
export type ChainHead = { readonly lastSeq: number; readonly prev: string };

/** One write's worth: its bytes, and the writer's state once they are on disk. */
export type Batch = {
  readonly data: Buffer;
  readonly records: number;
  readonly position: ChainHead;
  readonly fromQueue: number;
  readonly gaps: number;
  readonly dropped: number;
  readonly unsigned: number;
  readonly firstUnsignedAt: number;
  readonly stop: boolean;
};

/** Lines chained from a position, not yet written: the position moves only when they are. */
export class ChainBuilder {
  private readonly lines: string[] = [];
  bytes = 0;
  private lastSeq: number;
  private prev: string;

  constructor(
    private readonly gatewayId: string,
    private readonly signer: Pick<ReceiptSigner, 'keyId' | 'sign'>,
    from: ChainHead,
  ) {
    this.lastSeq = from.lastSeq;
    this.prev = from.prev;
  }

  get records(): number {
    return this.lines.length;
  }

  add(r: Pending): void {
    this.push({ ...r, gateway: this.gatewayId, seq: this.lastSeq + 1, prev: this.prev } as Receipt);
  }

  async checkpoint(cause: CheckpointReceipt['cause']): Promise<void> {
    const body: Omit<CheckpointReceipt, 'sig'> = {
      v: RECEIPT_FORMAT_VERSION,
      kind: 'checkpoint',
      gateway: this.gatewayId,
      seq: this.lastSeq + 1,
      at: receiptTime(),
      cause,
      key_id: this.signer.keyId,
      prev: this.prev,
    };
    const sig = await this.signer.sign(checkpointSignedBytes(body));
    this.push({ ...body, sig });
  }

  private push(r: Receipt): void {
    const line = encodeReceipt(r);
    this.lines.push(line);
    this.bytes += Buffer.byteLength(line) + 1;
    this.lastSeq = r.seq;
    this.prev = receiptHash(line);
  }

  data(): Buffer {
    return Buffer.from(`${this.lines.join('\n')}\n`, 'utf8');
  }

  position(): ChainHead {
    return { lastSeq: this.lastSeq, prev: this.prev };
  }
}

/** An unchained gap record, stamped now. */
export function gapRecord(
  reason: GapReceipt['reason'],
  lostReceipts: number | null,
  lostBytes: number,
  detail: string,
): Unchained<GapReceipt> {
  return {
    v: RECEIPT_FORMAT_VERSION,
    kind: 'gap',
    at: receiptTime(),
    reason,
    lost_receipts: lostReceipts,
    lost_bytes: lostBytes,
    detail,
  };
}
