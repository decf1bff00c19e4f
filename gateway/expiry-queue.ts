/**
 * One timer for the earliest deadline over many items (a binary min-heap), never one timer per tunnel.
 * Rescheduling an item leaves its old heap slot behind as stale; stale slots are skipped when popped and
 * swept when they outnumber live ones.
 */
import type { Micros } from '../core/timestamp.js';

/** setTimeout's ceiling is ~24.8 days; waking up every so often also absorbs wall-clock jumps. */
const MAX_TIMER_MS = 30_000;

type Slot<T> = { readonly at: Micros; readonly item: T; readonly version: number };

export class ExpiryQueue<T extends { readonly done: boolean }> {
  private heap: Slot<T>[] = [];
  private readonly versions = new WeakMap<T, number>();
  private timer: NodeJS.Timeout | undefined;
  private armedAt: Micros | undefined;
  private closed = false;

  constructor(
    private readonly onDue: (due: T[]) => void,
    private readonly now: () => Micros,
  ) {}

  /** Due at `at` (replacing any earlier schedule of the same item). */
  schedule(item: T, at: Micros): void {
    const version = (this.versions.get(item) ?? 0) + 1;
    this.versions.set(item, version);
    heapPush(this.heap, { at, item, version });
    this.arm();
  }

  /** Drop stale slots once they dominate (call when items finish). */
  compactIfSparse(liveItems: number): void {
    if (this.heap.length <= 2 * liveItems + 1024) return;
    const live = this.heap.filter((slot) => !this.isStale(slot));
    this.heap = [];
    for (const slot of live) heapPush(this.heap, slot);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private isStale(slot: Slot<T>): boolean {
    return slot.item.done || slot.version !== this.versions.get(slot.item);
  }

  private arm(): void {
    while (this.heap.length > 0 && this.isStale(this.heap[0]!)) heapPop(this.heap);
    const top = this.heap[0];
    if (top === undefined || this.closed) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.armedAt = undefined;
      return;
    }
    if (this.armedAt !== undefined && this.armedAt <= top.at && this.timer !== undefined) return;
    clearTimeout(this.timer);
    this.armedAt = top.at;
    const delayMs = Number((top.at - this.now()) / 1000n) + 1;
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_TIMER_MS, Math.max(0, delayMs)));
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    this.armedAt = undefined;
    const now = this.now();
    const due: T[] = [];
    while (this.heap.length > 0 && this.heap[0]!.at <= now) {
      const slot = heapPop(this.heap)!;
      if (!this.isStale(slot)) due.push(slot.item);
    }
    this.arm();
    if (due.length > 0) this.onDue(due);
  }
}

function heapPush<T>(heap: Slot<T>[], slot: Slot<T>): void {
  heap.push(slot);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (heap[parent]!.at <= slot.at) break;
    heap[i] = heap[parent]!;
    i = parent;
  }
  heap[i] = slot;
}

function heapPop<T>(heap: Slot<T>[]): Slot<T> | undefined {
  const top = heap[0];
  const last = heap.pop();
  if (top === undefined || last === undefined || heap.length === 0) return top;
  let i = 0;
  for (;;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let m = i;
    let mAt = last.at;
    if (l < heap.length && heap[l]!.at < mAt) {
      m = l;
      mAt = heap[l]!.at;
    }
    if (r < heap.length && heap[r]!.at < mAt) m = r;
    if (m === i) break;
    heap[i] = heap[m]!;
    i = m;
  }
  heap[i] = last;
  return top;
}
