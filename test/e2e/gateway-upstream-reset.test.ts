// RFC 9113 §8.5: a TCP reset by the destination reaches the client as RST_STREAM(CONNECT_ERROR), and never
// as END_STREAM first: END_STREAM means "the destination sent FIN", and a client (a sidecar) that sees it
// closes its agent's connection cleanly, so a truncated answer would look complete. node:http2's client
// cannot show the order of frames, so a raw HTTP/2 client reads them off the wire.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant, revokePermission } from '../../dev-support/registry-seed.js';
import { type GatewayProcess, startGatewayProcess } from '../support/gateway.js';
import {
  connectHeaders,
  describeFrames,
  FLAG,
  FRAME,
  type Frame,
  type RawH2,
  rawH2,
} from '../support/raw-h2.js';
import {
  type ResetOnCue,
  startEchoServer,
  startResetOnCueServer,
  type Upstream,
} from '../support/upstreams.js';

/** Tunnels per scenario: the END_STREAM-first order is a race, so one try proves little. */
const ROUNDS = 50;
const NGHTTP2_CONNECT_ERROR = 0xa;
const NGHTTP2_CANCEL = 0x8;
/** HPACK static table entry 8, ":status: 200", as the first byte of a response header block. */
const STATUS_200 = 0x88;

describe('upstream reset → RST_STREAM(CONNECT_ERROR), frames on the wire', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let agent: Carrier;
  let destination: ResetOnCue;
  let echo: Upstream;
  let revocable: string;

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'gateway_upstream_reset');
    destination = await startResetOnCueServer();
    echo = await startEchoServer();
    agent = await createCarrier('agent-reset');
    const principal = createPrincipalKey();
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'resets.test:443',
    });
    revocable = await grant(dbUrl, {
      principalId: 'org-alice',
      principal,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'revoked.test:443',
    });
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        upstream: {
          overrides: {
            'resets.test:443': `127.0.0.1:${destination.port}`,
            'revoked.test:443': `127.0.0.1:${echo.port}`,
          },
        },
      },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    await Promise.all([destination?.close(), echo?.close()]);
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
  });

  /**
   * ROUNDS tunnels, one after another on one connection; the client sends nothing but the request. Once
   * the 200 is on the wire the destination resets (after `first`, if given). Returns each stream's
   * frames, in wire order, up to and including its reset.
   */
  async function resetTunnels(raw: RawH2, first: Buffer | undefined): Promise<Frame[][]> {
    const perStream: Frame[][] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const sid = 1 + 2 * i;
      await raw.write(connectHeaders(sid, 'resets.test:443'));
      const response = await raw.waitForFrame((f) => f.streamId === sid && f.type === FRAME.HEADERS);
      // The dial succeeded, so what follows is the tunnel's end, not a refused CONNECT.
      expect(response.payload[0], `round ${i + 1}: ${describeFrames(raw.frames)}`).toBe(STATUS_200);
      await destination.reset(first);
      await raw.waitForFrame((f) => f.streamId === sid && f.type === FRAME.RST_STREAM, 5000);
      perStream.push(raw.frames.filter((f) => f.streamId === sid));
    }
    return perStream;
  }

  function expectResetWithoutEnd(frames: Frame[], label: string): void {
    const seen = `${label}: ${describeFrames(frames)}`;
    const endStream = frames.filter(
      (f) => (f.type === FRAME.DATA || f.type === FRAME.HEADERS) && (f.flags & FLAG.END_STREAM) !== 0,
    );
    expect(endStream, seen).toEqual([]);
    const resets = frames.filter((f) => f.type === FRAME.RST_STREAM);
    expect(resets.length, seen).toBe(1);
    expect(resets[0]?.payload.readUInt32BE(0), seen).toBe(NGHTTP2_CONNECT_ERROR);
  }

  for (const [name, first] of [
    ['resets before sending anything', undefined],
    ['sends data, then resets', Buffer.from('partial answer')],
  ] as const) {
    it(`destination accepts and ${name}: RST_STREAM(CONNECT_ERROR), no END_STREAM, ${ROUNDS} times`, async () => {
      const logsBefore = gw.logs('tunnel closed').length;
      const raw = await rawH2(gw.port, gw.caPem, agent, true, true);
      try {
        const perStream = await resetTunnels(raw, first);
        perStream.forEach((frames, i) => {
          expectResetWithoutEnd(frames, `round ${i + 1}`);
        });
        expect(raw.goaways, 'the connection stays up').toEqual([]);
      } finally {
        raw.socket.destroy();
      }
      await gw.waitForLogs('tunnel closed', () => gw.logs('tunnel closed').length >= logsBefore + ROUNDS);
      const lines = gw.logs('tunnel closed').slice(logsBefore);
      expect(lines.map((l) => l['end_reason'])).toEqual(Array(ROUNDS).fill('upstream_reset'));
    });
  }

  it('a revoked tunnel ends with RST_STREAM(CANCEL) and no END_STREAM before it', async () => {
    const raw = await rawH2(gw.port, gw.caPem, agent, true, true);
    try {
      await raw.write(connectHeaders(1, 'revoked.test:443'));
      const response = await raw.waitForFrame((f) => f.streamId === 1 && f.type === FRAME.HEADERS);
      expect(response.payload[0], describeFrames(raw.frames)).toBe(STATUS_200);
      await revokePermission(dbUrl, revocable);
      await raw.waitForFrame((f) => f.streamId === 1 && f.type === FRAME.RST_STREAM, 10_000);
      const frames = raw.frames.filter((f) => f.streamId === 1);
      const seen = describeFrames(frames);
      expect(
        frames.filter(
          (f) => (f.type === FRAME.DATA || f.type === FRAME.HEADERS) && (f.flags & FLAG.END_STREAM) !== 0,
        ),
        seen,
      ).toEqual([]);
      expect(frames.find((f) => f.type === FRAME.RST_STREAM)?.payload.readUInt32BE(0), seen).toBe(
        NGHTTP2_CANCEL,
      );
    } finally {
      raw.socket.destroy();
    }
  });
});
