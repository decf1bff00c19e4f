// The well-behaved client of the abuse-resistance tests (gateway-abuse-*.test.ts, issue #7): whatever
// another client does to the gateway, this one must still move 4 MiB through an echo tunnel, byte-exact.
import { createHash, randomBytes } from 'node:crypto';
import { expect } from 'vitest';
import type { Carrier } from '../../dev-support/pki.js';
import { closed, closeSession, connectH2, type GatewayProcess, openTunnel, roundTrip } from './gateway.js';

export const MiB = 1024 * 1024;

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * The well-behaved client: its own connection, its own identity, one tunnel to the echo destination,
 * 4 MiB there and back, byte-exact.
 */
export async function goodTransfer(
  gw: GatewayProcess,
  carrier: Carrier,
  destination = 'echo.test:443',
): Promise<void> {
  const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
  try {
    const t = await openTunnel(session, destination);
    expect(t.status, `good client CONNECT: ${String(t.headers['agent-gateway-deny-reason'])}`).toBe(200);
    const payload = randomBytes(4 * MiB);
    const back = await roundTrip(t.stream, payload, payload.length, 60_000);
    expect(back.length).toBe(payload.length);
    expect(sha256(back)).toBe(sha256(payload));
    t.stream.end();
    await closed(t.stream);
  } finally {
    await closeSession(session);
  }
}
