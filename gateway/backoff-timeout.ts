/**
 * One retry timer with exponential backoff and jitter, the shape of grpc-js's backoff-timeout.ts: the
 * owner calls runOnce() after each failure and reset() after a success. Jitter keeps a fleet of gateways
 * from reconnecting in lockstep after a database restart.
 */
export type BackoffOptions = {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  readonly multiplier?: number | undefined;
  /** Each delay is scaled by a random factor in [1 - jitter, 1 + jitter]. */
  readonly jitter?: number | undefined;
};

export class BackoffTimeout {
  private readonly multiplier: number;
  private readonly jitter: number;
  private nextDelayMs: number;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly callback: () => void,
    private readonly opts: BackoffOptions,
  ) {
    this.multiplier = opts.multiplier ?? 2;
    this.jitter = opts.jitter ?? 0.2;
    this.nextDelayMs = opts.initialDelayMs;
  }

  /** The delay the next runOnce() will use (before jitter). */
  get delayMs(): number {
    return this.nextDelayMs;
  }

  /** Schedule the callback once after the current delay, and grow the delay for the time after. */
  runOnce(): void {
    this.stop();
    const delay = this.nextDelayMs * (1 - this.jitter + Math.random() * 2 * this.jitter);
    this.nextDelayMs = Math.min(this.opts.maxDelayMs, this.nextDelayMs * this.multiplier);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.callback();
    }, delay);
    this.timer.unref();
  }

  /** Back to the initial delay (after a success). Does not cancel a scheduled run. */
  reset(): void {
    this.nextDelayMs = this.opts.initialDelayMs;
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  get isRunning(): boolean {
    return this.timer !== undefined;
  }
}
