// gateway/access-request-buffer.ts with a fake clock: repeats of one request are one entry with a count,
// the rate is per proven key (identity + SPKI) per minute, and distinct requests held between flushes
// are capped.
import { describe, expect, it } from 'vitest';
import type { PeerIdentity } from '../../core/identity-extension.js';
import { AccessRequestBuffer } from '../../gateway/access-request-buffer.js';

const peers = new Map<string, PeerIdentity>();
/** The same object for the same (identity, key), as tls-identity.ts hands out per certificate. */
function peer(identity: string, key = 'key-1'): PeerIdentity {
  const k = `${identity}|${key}`;
  let p = peers.get(k);
  if (p === undefined) {
    p = { identity, spkiDer: Buffer.from(key) };
    peers.set(k, p);
  }
  return p;
}

function setup(ratePerMinute: number, maxBuffered = 100) {
  // Not 0: lru-cache takes a start time of 0 as "no TTL" (see limits.test.ts).
  let now = 1000;
  const buffer = new AccessRequestBuffer({ ratePerMinute, maxBuffered, nowMs: () => now });
  return { buffer, advance: (ms: number) => (now += ms) };
}

describe('AccessRequestBuffer', () => {
  it('holds repeats of one request as one entry: count, latest reason, latest time', () => {
    const { buffer, advance } = setup(60);
    const a = peer('agent-a');
    expect(buffer.add('req-1', a, 'docstore:443', 'no_permission')).toBe('buffered');
    advance(40);
    expect(buffer.add('req-1', a, 'docstore:443', 'permission_revoked')).toBe('buffered');
    expect(buffer.add('req-2', a, 'wiki:443', 'no_permission')).toBe('buffered');
    const taken = buffer.take();
    expect(taken).toEqual([
      {
        requestId: 'req-1',
        identity: 'agent-a',
        spkiDer: a.spkiDer,
        destination: 'docstore:443',
        count: 2,
        reason: 'permission_revoked',
        seenAtMs: 1040,
      },
      {
        requestId: 'req-2',
        identity: 'agent-a',
        spkiDer: a.spkiDer,
        destination: 'wiki:443',
        count: 1,
        reason: 'no_permission',
        seenAtMs: 1040,
      },
    ]);
    expect(buffer.size).toBe(0);
    expect(buffer.take()).toEqual([]);
  });

  it('records ratePerMinute denials per proven key, refilled evenly over the minute', () => {
    const { buffer, advance } = setup(3);
    const a = peer('agent-a');
    const outcomes = Array.from({ length: 5 }, (_, i) =>
      buffer.add(`req-${i}`, a, `d${i}:443`, 'no_permission'),
    );
    expect(outcomes).toEqual(['buffered', 'buffered', 'buffered', 'dropped_rate', 'dropped_rate']);
    // Another key claiming the same identity, and another identity, have buckets of their own.
    expect(buffer.add('req-x', peer('agent-a', 'key-2'), 'd:443', 'no_permission')).toBe('buffered');
    expect(buffer.add('req-y', peer('agent-b'), 'd:443', 'no_permission')).toBe('buffered');
    // 3 per minute: one token every 20 s.
    advance(19_000);
    expect(buffer.add('req-5', a, 'd5:443', 'no_permission')).toBe('dropped_rate');
    advance(1_000);
    expect(buffer.add('req-5', a, 'd5:443', 'no_permission')).toBe('buffered');
    expect(buffer.add('req-6', a, 'd6:443', 'no_permission')).toBe('dropped_rate');
    expect(buffer.take().map((e) => e.requestId)).toEqual([
      'req-0',
      'req-1',
      'req-2',
      'req-x',
      'req-y',
      'req-5',
    ]);
  });

  it('a repeat of a held request also spends the rate', () => {
    const { buffer } = setup(2);
    const a = peer('agent-a');
    expect(buffer.add('req-1', a, 'd:443', 'no_permission')).toBe('buffered');
    expect(buffer.add('req-1', a, 'd:443', 'no_permission')).toBe('buffered');
    expect(buffer.add('req-1', a, 'd:443', 'no_permission')).toBe('dropped_rate');
    expect(buffer.take()[0]?.count).toBe(2);
  });

  it('rate 0 is unlimited', () => {
    const { buffer } = setup(0);
    const a = peer('agent-a');
    for (let i = 0; i < 1000; i++) expect(buffer.add('req-1', a, 'd:443', 'no_permission')).toBe('buffered');
    expect(buffer.take()[0]?.count).toBe(1000);
  });

  it('beyond maxBuffered distinct requests a new one is dropped, a held one still counted', () => {
    const { buffer } = setup(0, 2);
    const a = peer('agent-a');
    expect(buffer.add('req-1', a, 'd1:443', 'no_permission')).toBe('buffered');
    expect(buffer.add('req-2', a, 'd2:443', 'no_permission')).toBe('buffered');
    expect(buffer.add('req-3', a, 'd3:443', 'no_permission')).toBe('dropped_full');
    expect(buffer.add('req-1', a, 'd1:443', 'no_permission')).toBe('buffered');
    expect(buffer.take().map((e) => [e.requestId, e.count])).toEqual([
      ['req-1', 2],
      ['req-2', 1],
    ]);
    // Room again once taken.
    expect(buffer.add('req-3', a, 'd3:443', 'no_permission')).toBe('buffered');
  });
});
