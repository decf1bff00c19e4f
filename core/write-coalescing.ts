/**
 * Write coalescing for tunnels, shared by the gateway (client bytes to the destination socket) and the
 * sidecar (gateway bytes to the agent socket): HTTP/2 hands over one DATA frame (≤16 KiB) at a time and
 * Node writes each to the socket separately. Holding the socket corked until the next event-loop turn
 * turns those into one writev: measured, about half the write syscalls on uploads
 * (bench/README.md, "Upload writes don't coalesce"). Uncorking on process.nextTick does not coalesce.
 *
 * One list and one setImmediate per turn however many tunnels are busy: the gateway has many tunnels in
 * a turn, and a sidecar with one tunnel pays the one setImmediate it would pay alone. The list belongs
 * to an instance (one per program) because core/ keeps no global state.
 */
import type { Socket } from 'node:net';

export class WriteCoalescer {
  private corked: Socket[] = [];
  private spare: Socket[] = [];
  private flushScheduled = false;

  /** Cork `socket` (unless it is corked already) and uncork it at the next event-loop turn. */
  corkUntilNextTurn(socket: Socket): void {
    if (socket.writableCorked > 0) return;
    socket.cork();
    this.corked.push(socket);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  // Bound once: scheduling the flush allocates nothing per turn.
  private readonly flush = (): void => {
    this.flushScheduled = false;
    // Two lists swapped: no array allocated per turn, and a socket corked during the flush waits a turn.
    const batch = this.corked;
    this.corked = this.spare;
    this.spare = batch;
    for (const socket of batch) {
      if (socket.writableCorked > 0) socket.uncork();
    }
    batch.length = 0;
  };
}
