/**
 * Write coalescing for tunnels, shared by the gateway (client bytes to the destination socket) and the
 * sidecar (gateway bytes to the agent socket): HTTP/2 hands over one DATA frame (≤16 KiB) at a time and
 * Node writes each to the socket separately. Holding the socket corked until the next event-loop turn
 * turns those into one writev: measured, about half the write syscalls on uploads
 * (bench/README.md, "Upload writes don't coalesce").
 * Uncorking on process.nextTick does not coalesce.
 *
 * One shared list and one setImmediate per turn, however many tunnels are busy: the gateway has many
 * tunnels per turn, and a sidecar with a single tunnel pays the same one setImmediate it would alone.
 */
import type { Socket } from 'node:net';

let corked: Socket[] = [];
let spare: Socket[] = [];
let flushScheduled = false;

/** Cork `socket` (if it is not already) and uncork it at the next event-loop turn. */
export function corkUntilNextTurn(socket: Socket): void {
  if (socket.writableCorked > 0) return;
  socket.cork();
  corked.push(socket);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flushCorked);
  }
}

function flushCorked(): void {
  flushScheduled = false;
  // Two lists swapped: no array allocated per turn, and a socket corked during the flush waits a turn.
  const batch = corked;
  corked = spare;
  spare = batch;
  for (const socket of batch) {
    if (socket.writableCorked > 0) socket.uncork();
  }
  batch.length = 0;
}
