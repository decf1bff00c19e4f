// Keeps bytes flowing through an echo tunnel and records when and how the tunnel ended, so tests can
// tell a tunnel that is still carrying data from one the gateway has reset.
import type { ClientHttp2Stream } from 'node:http2';
import { setTimeout as sleep } from 'node:timers/promises';

export class Pump {
  received = 0;
  closedAt: number | undefined;
  rstCode: number | undefined;
  private timer: NodeJS.Timeout;
  constructor(readonly stream: ClientHttp2Stream) {
    stream.on('data', (c: Buffer) => {
      this.received += c.length;
    });
    stream.on('close', () => {
      this.closedAt = Date.now();
      this.rstCode = stream.rstCode;
      clearInterval(this.timer);
    });
    stream.on('error', () => {});
    stream.resume();
    this.timer = setInterval(() => {
      if (!stream.destroyed && !stream.closed) stream.write(Buffer.alloc(1024, 0x61));
    }, 10);
  }
  /** Bytes received grow over the next `ms`. */
  async flowing(ms = 300): Promise<boolean> {
    const before = this.received;
    await sleep(ms);
    return this.received > before;
  }
  stop(): void {
    clearInterval(this.timer);
    this.stream.end();
  }
}
