/**
 * The read-your-revocations position (docs/contract.md "Replicas"): the primary's WAL insert position
 * (pg_current_wal_insert_lsn(), not pg_current_wal_lsn(): with synchronous_commit off a commit, and its
 * notification, can come before its WAL is written, and the write position would then precede it), read again after every batch of registry change notifications (and at start). A replica may answer a
 * lookup only once it has replayed at least this position, so a change the gateway has heard of is never
 * answered from before it.
 *
 * Every notification bumps an epoch; a position is good for a lookup only when it was read after the
 * lookup's latest notification, so notifications arriving while a read is in flight cause one more read
 * (not one per notification: a burst is one batch).
 */

/** pg_lsn text ('16/B374D848') as a 64-bit number; undefined for NULL or anything else. */
export function parseLsn(text: string | null | undefined): bigint | undefined {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text ?? '');
  if (m === null) return undefined;
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export class PrimaryWalPosition {
  private position: bigint | undefined;
  /** Bumped by every notification (and at start, when nothing was read yet). */
  private epoch = 1;
  /** The epoch `position` was read in (started after its notification arrived). */
  private readEpoch = 0;
  private reading: Promise<void> | undefined;

  /** `fetch` reads pg_current_wal_insert_lsn() on the primary as text; it may throw (primary unreachable). */
  constructor(private readonly fetch: () => Promise<string>) {}

  /** A registry change was announced: positions read before now no longer cover it. */
  changed(): void {
    this.epoch++;
    void this.read().catch(() => {});
  }

  /** The last position read, whatever notifications came after it (for logs while the primary is down). */
  get last(): bigint | undefined {
    return this.position;
  }

  /**
   * The position a replica must have replayed to answer a lookup starting now: read after the latest
   * notification, waiting for that read when it is in flight. Throws when the primary cannot be read.
   */
  async required(): Promise<bigint> {
    const want = this.epoch;
    while (this.readEpoch < want || this.position === undefined) await this.read();
    return this.position as bigint;
  }

  /** One read of the primary's position; a change that arrived meanwhile starts the next one. */
  private read(): Promise<void> {
    this.reading ??= (async () => {
      let ok = false;
      try {
        const epoch = this.epoch;
        const lsn = parseLsn(await this.fetch());
        if (lsn === undefined) throw new Error('the primary reported no WAL position (is it a standby?)');
        if (this.position === undefined || lsn > this.position) this.position = lsn;
        this.readEpoch = epoch;
        ok = true;
      } finally {
        this.reading = undefined;
        if (ok && this.readEpoch < this.epoch) void this.read().catch(() => {});
      }
    })();
    return this.reading;
  }
}
