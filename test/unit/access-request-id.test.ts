// core/access-request-id.ts: the request id the gateway puts in its 403 and the registry CLI approves by.
// The vectors were computed outside this code (printf | sha256sum) and are the ones docs/contract.md
// "Access requests" publishes, so another implementation can check itself against them.
import { describe, expect, it } from 'vitest';
import { accessRequestId, isAccessRequestId } from '../../core/access-request-id.js';

const SPKI = Buffer.from(
  `3059301306072a8648ce3d020106082a8648ce3d03010703420004${Buffer.from(
    Array.from({ length: 64 }, (_, i) => i + 1),
  ).toString('hex')}`,
  'hex',
);

describe('accessRequestId', () => {
  it('matches the published vectors', () => {
    expect(accessRequestId('agent-beta', SPKI, 'docstore:443')).toBe('req-10357ef30931e5f9894d');
    expect(accessRequestId('agent-beta', SPKI, '[2001:db8::1]:8443')).toBe('req-5f41192191a083dab005');
    expect(accessRequestId('ägent', SPKI, 'xn--bcher-kva.example:443')).toBe('req-8ebd1e4e188cf3b3f34f');
  });

  it('reads only the bytes of the view it is given', () => {
    const padded = Buffer.concat([Buffer.from([0xff, 0xee]), SPKI, Buffer.from([0xdd])]);
    const view = new Uint8Array(padded.buffer, padded.byteOffset + 2, SPKI.length);
    expect(accessRequestId('agent-beta', view, 'docstore:443')).toBe('req-10357ef30931e5f9894d');
  });

  it('changes with every part, and the separators keep the parts apart', () => {
    const base = accessRequestId('agent-beta', SPKI, 'docstore:443');
    const other = Buffer.from(SPKI);
    other[other.length - 1] = 0;
    const ids = [
      base,
      accessRequestId('agent-betb', SPKI, 'docstore:443'),
      accessRequestId('agent-beta', other, 'docstore:443'),
      accessRequestId('agent-beta', SPKI, 'docstore:444'),
      // The identity cannot absorb the start of the hex, nor the destination the end of it.
      accessRequestId('agent-beta\n30', SPKI.subarray(1), 'docstore:443'),
    ];
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids) expect(isAccessRequestId(id)).toBe(true);
  });

  it('isAccessRequestId accepts exactly req- and 20 lowercase hex characters', () => {
    expect(isAccessRequestId('req-0123456789abcdef0123')).toBe(true);
    for (const bad of [
      'req-0123456789abcdef012',
      'req-0123456789abcdef01234',
      'req-0123456789ABCDEF0123',
      'REQ-0123456789abcdef0123',
      ' req-0123456789abcdef0123',
      'req-0123456789abcdef0123\n',
      'req-0123456789abcdefg123',
    ]) {
      expect(isAccessRequestId(bad), bad).toBe(false);
    }
  });
});
