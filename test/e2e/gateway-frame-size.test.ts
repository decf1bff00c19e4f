// `http2.max_frame_size` (docs/contract.md "Configuration"): the gateway advertises it in its SETTINGS, a
// client that honours it may upload DATA frames that large and every byte reaches the destination, a
// frame over it is a FRAME_SIZE_ERROR for the connection (RFC 9113 §4.2). node:http2 never sends a DATA
// frame over 16 KiB whatever the peer allows, so a raw HTTP/2 client writes the frames.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { type GatewayProcess, startGatewayProcess } from '../support/gateway.js';
import { connectHeaders, describeFrames, FLAG, FRAME, frame, type RawH2, rawH2 } from '../support/raw-h2.js';
import { patternBlock, startBulkServer } from '../support/upstreams.js';

/** Not the default (256 KiB), so the test sees the configured value. */
const MAX_FRAME_SIZE = 128 * 1024;
const SETTINGS_MAX_FRAME_SIZE = 0x5;
const WINDOW_UPDATE = 0x8;
const FRAME_SIZE_ERROR = 0x6;
/** HPACK static table entry 8, ":status: 200", as the first byte of a response header block. */
const STATUS_200 = 0x88;

function settingsOf(payload: Buffer): Map<number, number> {
  const out = new Map<number, number>();
  for (let i = 0; i + 6 <= payload.length; i += 6)
    out.set(payload.readUInt16BE(i), payload.readUInt32BE(i + 2));
  return out;
}

describe('http2.max_frame_size', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let gw: GatewayProcess;
  let agent: Carrier;
  let bulk: Awaited<ReturnType<typeof startBulkServer>>;
  const clients: RawH2[] = [];

  beforeAll(async () => {
    dbUrl = await createMigratedDatabase(adminUrl, 'gateway_frame_size');
    // The destination sends nothing back: the raw client grants no window beyond the default 64 KiB.
    bulk = await startBulkServer(0);
    agent = await createCarrier('agent-frames');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: 'bulk.test:443',
    });
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        http2: { max_frame_size: MAX_FRAME_SIZE },
        upstream: { overrides: { 'bulk.test:443': `127.0.0.1:${bulk.port}` } },
      },
    });
  });

  afterAll(async () => {
    for (const c of clients) c.socket.destroy();
    await gw?.cleanup();
    await bulk?.close();
    if (dbUrl !== undefined) await dropDatabase(adminUrl, dbUrl);
  });

  /** A connection past the handshake: the gateway's SETTINGS and its connection WINDOW_UPDATE seen. */
  async function connected(): Promise<{ c: RawH2; settings: Map<number, number> }> {
    const c = await rawH2(gw.port, gw.caPem, agent, true, true);
    clients.push(c);
    const s = await c.waitForFrame((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0);
    // The connection window starts at 64 KiB; the gateway raises it right after its SETTINGS.
    await c.waitForFrame((f) => f.type === WINDOW_UPDATE && f.streamId === 0);
    return { c, settings: settingsOf(s.payload) };
  }

  it('is advertised in SETTINGS, and frames that large carry every byte to the destination', async () => {
    const { c, settings } = await connected();
    expect(settings.get(SETTINGS_MAX_FRAME_SIZE)).toBe(MAX_FRAME_SIZE);
    await c.write(connectHeaders(1, 'bulk.test:443'));
    const answer = await c.waitForFrame((f) => f.type === FRAME.HEADERS && f.streamId === 1);
    expect(answer.payload[0], describeFrames(c.frames)).toBe(STATUS_200);

    // Sizes around the limit, 0.8 MiB in all: within the gateway's 4 MiB stream window.
    const sizes = [MAX_FRAME_SIZE, MAX_FRAME_SIZE - 1, 100_000, MAX_FRAME_SIZE, 16_385, MAX_FRAME_SIZE, 77];
    const hash = createHash('sha256');
    let total = 0;
    for (const [i, size] of sizes.entries()) {
      const payload = Buffer.concat([patternBlock(i, 64 * 1024)], size);
      hash.update(payload);
      total += size;
      const last = i === sizes.length - 1;
      expect(await c.write(frame(FRAME.DATA, last ? FLAG.END_STREAM : 0, 1, payload))).toBe(true);
    }
    // END_STREAM → FIN to the destination, which records what it got.
    const deadline = Date.now() + 10_000;
    while (bulk.results.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(bulk.results[0]).toMatchObject({ received: total, receivedSha256: hash.digest('hex') });
    expect(c.goaways).toEqual([]);
  });

  it('a DATA frame over it ends the connection with FRAME_SIZE_ERROR', async () => {
    const { c } = await connected();
    await c.write(connectHeaders(1, 'bulk.test:443'));
    await c.waitForFrame((f) => f.type === FRAME.HEADERS && f.streamId === 1);
    await c.write(frame(FRAME.DATA, 0, 1, Buffer.alloc(MAX_FRAME_SIZE + 1)));
    await c.gone;
    expect(c.goaways).toEqual([FRAME_SIZE_ERROR]);
  });
});
