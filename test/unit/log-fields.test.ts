// Client-supplied log values are capped (gateway/telemetry.ts boundedLogValue): whatever a client sends,
// the JSON-encoded field stays within LOG_FIELD_MAX_BYTES and different values stay distinguishable.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { boundedLogValue, LOG_FIELD_MAX_BYTES } from '../../gateway/telemetry.js';

const encodedBytes = (v: string) => Buffer.byteLength(JSON.stringify(v));

describe('boundedLogValue', () => {
  it('keeps short values as they are', () => {
    for (const v of ['', 'build-agent-01', 'api.example.com:443', 'ß'.repeat(128)]) {
      expect(boundedLogValue(v)).toBe(v);
    }
  });

  it('caps a 30,000-character value to its prefix, length and hash', () => {
    const v = 'a'.repeat(30_000);
    const out = boundedLogValue(v);
    expect(out).toMatch(/^a{64}…\[30000 chars, sha256 [0-9a-f]{16}…\]$/);
    expect(boundedLogValue(`${v}b`)).not.toBe(out);
  });

  it('bounds the encoded size for any string, escapes and astral characters included', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 5000 }), (v) => {
        expect(encodedBytes(boundedLogValue(v))).toBeLessThanOrEqual(LOG_FIELD_MAX_BYTES);
      }),
      { numRuns: 2000 },
    );
    expect(encodedBytes(boundedLogValue('\u0001'.repeat(1000)))).toBeLessThanOrEqual(LOG_FIELD_MAX_BYTES);
  });
});
