// Gateway config: policy.trust_roots and policy.trust_root_files (docs/contract.md "Root of trust").
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../gateway/config.js';
import { ORIGINAL, parse } from './fixtures/gateway-config-text.js';

describe('gateway config: trust roots (docs/contract.md "Root of trust")', () => {
  const ROOT_B64 =
    'MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEI6tL1Xh1JHTmQWBq4oC3sKxBgEIKY1NHHhSjIYuiyvYBeXosIbcqRDnwf8jk/MKCx1grqqdTW2PWiWJ+RcrfQg==';
  const ROOT_ID = 'sha256:cc814ea65acda8c70dbc41c43df35e8d18ce90e25fb92b934d90ef138ad95c49';
  const withRoots = (lines: string) => `${ORIGINAL}${lines}\n`;

  it('reads base64 SPKI entries and PEM files, keyed by root id', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'agw-roots-'));
    const pem = path.join(dir, 'root.pem');
    const der = Buffer.from(ROOT_B64, 'base64');
    writeFileSync(
      pem,
      `-----BEGIN PUBLIC KEY-----\n${der
        .toString('base64')
        .match(/.{1,64}/g)!
        .join('\n')}\n-----END PUBLIC KEY-----\n`,
    );
    const c = parse(withRoots(`trust_roots = ["${ROOT_B64}"]\ntrust_root_files = ["${pem}"]`));
    expect([...c.policy.trustRoots.keys()]).toEqual([ROOT_ID]);
    expect(c.policy.trustRoots.get(ROOT_ID)!.equals(der)).toBe(true);
  });

  it.each([
    ['not base64', 'trust_roots = ["not base64!"]', 'policy.trust_roots[0]'],
    [
      'a P-384 key',
      `trust_roots = ["${ROOT_B64}", "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE42cC1Jske4mxnr+S3ECthEsifdWPgtT6pPHrYZ2p9zStm3g/LYp90xVXn+S3iBbHLMUV22SqIC9r6y7dWFwklrCMb5MgajQE6ZDGRcWQ3XKyoY9P67PUWHGDzv7UTLL+"]`,
      'policy.trust_roots[1]',
    ],
    ['a string, not a list', `trust_roots = "${ROOT_B64}"`, 'policy.trust_roots'],
    ['a missing file', 'trust_root_files = ["/nonexistent/root.pem"]', 'policy.trust_root_files[0]'],
  ])('refuses %s, naming the entry', (_what, line, key) => {
    expect(() => parse(withRoots(line))).toThrow(ConfigError);
    expect(() => parse(withRoots(line))).toThrow(`test.toml: ${key}: `);
  });

  it('refuses a PEM file holding a certificate or a private key instead of a PUBLIC KEY', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'agw-roots-'));
    const priv = path.join(dir, 'priv.pem');
    writeFileSync(priv, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
    expect(() => parse(withRoots(`trust_root_files = ["${priv}"]`))).toThrow(
      'test.toml: policy.trust_root_files[0]: ',
    );
  });
});
