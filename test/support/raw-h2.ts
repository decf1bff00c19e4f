// A raw HTTP/2 client over mTLS: for frames node:http2 will not send (abuse tests), and for checking the
// frames the gateway puts on the wire, in order (node:http2's client folds END_STREAM and RST_STREAM into
// one 'close', so it cannot tell "clean end, then reset" from "reset").
import tls from 'node:tls';
import type { Carrier } from '../../dev-support/pki.js';

export const FRAME = {
  DATA: 0x0,
  HEADERS: 0x1,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  GOAWAY: 0x7,
  CONTINUATION: 0x9,
} as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;

export type Frame = {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
};

export type RawH2 = {
  readonly socket: tls.TLSSocket;
  /** Resolves when the server has closed the connection (or it errored). */
  readonly gone: Promise<void>;
  /** GOAWAY error codes received so far. */
  readonly goaways: number[];
  /** Streams reset by the server: [streamId, code]. */
  readonly resets: [number, number][];
  /** Every frame received so far, in wire order (empty when frames are not read). */
  readonly frames: Frame[];
  /** Write, honouring backpressure; false once the socket is gone. */
  write(b: Buffer): Promise<boolean>;
  /** The first received frame matching `match` (already seen or future); rejects after timeoutMs. */
  waitForFrame(match: (f: Frame) => boolean, timeoutMs?: number): Promise<Frame>;
};

export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** HPACK literal header field without indexing, new name (RFC 7541 §6.2.2); lengths < 127 only. */
export function hpackLiteral(name: string, value: string): Buffer {
  if (name.length >= 127 || value.length >= 127)
    throw new Error('hpackLiteral: name and value must be < 127 bytes');
  return Buffer.concat([
    Buffer.from([0x00, name.length]),
    Buffer.from(name),
    Buffer.from([value.length]),
    Buffer.from(value),
  ]);
}

/** A complete CONNECT request (HEADERS with END_HEADERS, no END_STREAM) for `authority` on `streamId`. */
export function connectHeaders(streamId: number, authority: string): Buffer {
  const block = Buffer.concat([hpackLiteral(':method', 'CONNECT'), hpackLiteral(':authority', authority)]);
  return frame(FRAME.HEADERS, FLAG.END_HEADERS, streamId, block);
}

/**
 * Connect, send the preface and an empty SETTINGS. With `readFrames` every frame is parsed and recorded;
 * with `ackSettings` too, the server's SETTINGS are acknowledged as a well-behaved client would (the abuse
 * tests rely on a client that never does).
 */
export function rawH2(
  port: number,
  ca: string,
  carrier: Carrier,
  readFrames = true,
  ackSettings = false,
): Promise<RawH2> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca,
      cert: carrier.certPem,
      key: carrier.keyPem,
      ALPNProtocols: ['h2'],
    });
    const goaways: number[] = [];
    const resets: [number, number][] = [];
    const frames: Frame[] = [];
    const waiters = new Set<{ match: (f: Frame) => boolean; done: (f: Frame) => void }>();
    let buf = Buffer.alloc(0);
    let isGone = false;
    const gone = new Promise<void>((res) => {
      socket.once('close', () => {
        isGone = true;
        res();
      });
    });
    socket.on('error', () => {});
    if (readFrames) {
      socket.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 9) {
          const len = buf.readUIntBE(0, 3);
          if (buf.length < 9 + len) break;
          const f: Frame = {
            type: buf[3] as number,
            flags: buf[4] as number,
            streamId: buf.readUInt32BE(5) & 0x7fffffff,
            payload: Buffer.from(buf.subarray(9, 9 + len)),
          };
          buf = buf.subarray(9 + len);
          frames.push(f);
          if (f.type === FRAME.GOAWAY && f.payload.length >= 8) goaways.push(f.payload.readUInt32BE(4));
          if (f.type === FRAME.RST_STREAM && f.payload.length >= 4)
            resets.push([f.streamId, f.payload.readUInt32BE(0)]);
          if (ackSettings && f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0 && !socket.destroyed) {
            socket.write(frame(FRAME.SETTINGS, FLAG.ACK, 0));
          }
          for (const w of waiters) {
            if (w.match(f)) {
              waiters.delete(w);
              w.done(f);
            }
          }
        }
      });
    }
    const write = (b: Buffer) =>
      new Promise<boolean>((res) => {
        if (isGone || socket.destroyed) return res(false);
        if (socket.write(b)) return res(true);
        const onDrain = () => {
          socket.off('close', onClose);
          res(true);
        };
        const onClose = () => {
          socket.off('drain', onDrain);
          res(false);
        };
        socket.once('drain', onDrain);
        socket.once('close', onClose);
      });
    const waitForFrame = (match: (f: Frame) => boolean, timeoutMs = 5000) => {
      const seen = frames.find(match);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise<Frame>((res, rej) => {
        const waiter = {
          match,
          done: (f: Frame) => {
            clearTimeout(timer);
            res(f);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          rej(new Error(`no matching frame within ${timeoutMs} ms; got ${describeFrames(frames)}`));
        }, timeoutMs);
        waiters.add(waiter);
      });
    };
    socket.once('secureConnect', () => {
      socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
      resolve({ socket, gone, goaways, resets, frames, write, waitForFrame });
    });
    socket.once('error', reject);
  });
}

/** Frames as short text for assertion messages: "HEADERS#1 DATA#1[END_STREAM] RST_STREAM#1(10)". */
export function describeFrames(frames: readonly Frame[]): string {
  const names = new Map<number, string>(Object.entries(FRAME).map(([k, v]) => [v, k]));
  return frames
    .map((f) => {
      const name = names.get(f.type) ?? `type${f.type}`;
      const end = (f.type === FRAME.DATA || f.type === FRAME.HEADERS) && (f.flags & FLAG.END_STREAM) !== 0;
      const code =
        f.type === FRAME.RST_STREAM && f.payload.length >= 4 ? `(${f.payload.readUInt32BE(0)})` : '';
      return `${name}#${f.streamId}${end ? '[END_STREAM]' : ''}${code}`;
    })
    .join(' ');
}
