// CI sample of the parser fuzz properties (test/fuzz/*.fuzz.ts): CI_RUNS inputs per target, shared by its
// properties; `npm run fuzz` runs the full count. A failure message carries fast-check's seed, path and
// shrunk counterexample: replay it with FUZZ_SEED=<seed> npm run fuzz -- <target>, or pass { seed, path }
// to fc.assert below. The regressions below are the bugs these properties found, pinned as examples.
import * as fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_IDENTITY_OID,
  encodeIdentityExtensionValue,
  readPeerIdentity,
} from '../../core/identity-extension.js';
import { AmbiguousFieldError, canonicalPermissionBytes } from '../../core/permission-bytes.js';
import { formatTimestamp, InvalidTimestampError, parseTimestamp } from '../../core/timestamp.js';
import { ConfigError, parseConfig } from '../../gateway/config.js';
import { removeConfigScratch } from './config.fuzz.js';
import { certificateDer } from './der.js';
import { CI_RUNS, runsPerProperty } from './fuzz-target.js';
import { TARGETS } from './targets.js';

afterAll(removeConfigScratch);

for (const target of TARGETS) {
  describe(target.name, () => {
    for (const { name, property } of target.properties) {
      it(name, () => {
        fc.assert(property, { numRuns: runsPerProperty(target, CI_RUNS) });
      });
    }
  });
}

describe('regressions found by the fuzz properties', () => {
  const OID = DEFAULT_IDENTITY_OID;
  const identity = new Uint8Array(encodeIdentityExtensionValue('agent-a'));

  it('a certificate whose authorityInfoAccess does not decode is invalid_client_certificate, not a throw', () => {
    const der = certificateDer([
      { oid: '1.3.6.1.5.5.7.1.1', value: Uint8Array.from([0x30, 0x02, 0x05, 0x00]) },
      { oid: OID, value: identity },
    ]);
    const r = readPeerIdentity(der, OID);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toBe('invalid_client_certificate');
  });

  it('an identity extension the BER decoder throws on (empty GeneralizedTime) is invalid_identity_extension', () => {
    const r = readPeerIdentity(certificateDer([{ oid: OID, value: Uint8Array.from([0x18, 0x00]) }]), OID);
    expect(r.ok ? r.peer.identity : r.reason).toBe('invalid_identity_extension');
  });

  it('a UTF8String with a long-form length or tag is not DER: invalid_identity_extension', () => {
    for (const value of [
      [0x0c, 0x81, 0x03, 0x61, 0x62, 0x63],
      [0x1f, 0x0c, 0x03, 0x61, 0x62, 0x63],
    ]) {
      const r = readPeerIdentity(certificateDer([{ oid: OID, value: Uint8Array.from(value) }]), OID);
      expect(r.ok ? r.peer.identity : r.reason).toBe('invalid_identity_extension');
    }
  });

  it('an unpaired surrogate in a signed field is refused: it would sign as U+FFFD', () => {
    const row = {
      permissionId: 'p1',
      signingKeyId: 'k1',
      subjectIdentity: 'agent-a',
      subjectSpkiDer: Uint8Array.from([1, 2]),
      destination: 'api.example.com:443',
      notBefore: parseTimestamp('2026-01-01T00:00:00.000000Z'),
      notAfter: parseTimestamp('2026-02-01T00:00:00.000000Z'),
    };
    for (const lone of ['\ud800', '\udc00', 'a\ud83d']) {
      expect(() => canonicalPermissionBytes({ ...row, subjectIdentity: lone })).toThrow(AmbiguousFieldError);
    }
    expect(canonicalPermissionBytes({ ...row, subjectIdentity: '\ud83d\udca9' }).toString('utf8')).toContain(
      'subject_identity=\ud83d\udca9\n',
    );
  });

  it('a timestamp outside the years 0000..9999 is refused, not written with its milliseconds cut off', () => {
    const year10000 = 253_402_300_800_000_000n;
    expect(() => formatTimestamp(year10000)).toThrow(InvalidTimestampError);
    expect(() => formatTimestamp(-62_167_219_200_000_001n)).toThrow(InvalidTimestampError);
    expect(formatTimestamp(year10000 - 1n)).toBe('9999-12-31T23:59:59.999999Z');
    expect(formatTimestamp(-62_167_219_200_000_000n)).toBe('0000-01-01T00:00:00.000000Z');
  });

  it('an inline table where an integer belongs is a ConfigError naming the key', () => {
    const raw = {
      server: {
        tls_cert_path: '/c',
        tls_key_path: '/k',
        workers: Object.assign(Object.create(null), { a: 1 }),
      },
      observability: {},
      policy: { database_url: 'postgres://x' },
    };
    expect(() => parseConfig(raw, 'fuzz.toml')).toThrow(ConfigError);
    expect(() => parseConfig(raw, 'fuzz.toml')).toThrow(
      /^fuzz\.toml: server\.workers: must be an integer, got a table$/,
    );
  });
});
