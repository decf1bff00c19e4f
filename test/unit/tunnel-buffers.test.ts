// How much one tunnel may queue into the HTTP/2 connection it shares: 1 MiB alone, a share of 8 MiB per
// connection as tunnels multiply, never under 64 KiB (core/tunnel-buffers.ts; gateway and sidecar).
import { describe, expect, it } from 'vitest';
import { perTunnelBufferLimit } from '../../core/tunnel-buffers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('perTunnelBufferLimit', () => {
  it.each([
    [0, MiB],
    [1, MiB],
    [8, MiB],
    [16, 512 * KiB],
    [100, (8 * MiB) / 100],
    [128, 64 * KiB],
    [1000, 64 * KiB],
  ])('with %i tunnels on the connection: %i bytes each', (tunnels, limit) => {
    expect(perTunnelBufferLimit(tunnels)).toBe(limit);
  });

  it('keeps what one connection can queue at 8 MiB until the 64 KiB floor is reached', () => {
    for (const tunnels of [1, 8, 9, 50, 100, 128]) {
      expect(tunnels * perTunnelBufferLimit(tunnels)).toBeLessThanOrEqual(
        Math.max(8 * MiB, tunnels * 64 * KiB),
      );
    }
  });
});
