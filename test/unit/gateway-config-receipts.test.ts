// The [receipts] section (docs/contract.md "Receipts", Writer and configuration): defaults, every
// mistake a ConfigError naming the key, receipts-key's reader that needs no database variable, and the
// receipt key itself (PEM file or pkcs11: URI) refused with receipts.signing_key named.
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { loadConfigReceipts, parseConfig } from '../../gateway/config.js';
import { gatewayIdOf } from '../../gateway/receipts/gateway-receipts.js';
import {
  keyIdOf,
  openReceiptSigner,
  parsePkcs11Uri,
  ReceiptKeyError,
} from '../../gateway/receipts/receipt-signer.js';

const BASE = `
[server]
tls_cert_path = "cert.pem"
tls_key_path = "key.pem"
workers = 1

[observability]

[policy]
database_url_env = "AGENT_GATEWAY_DATABASE_URL"
`;
const ENV = { AGENT_GATEWAY_DATABASE_URL: 'postgresql://gw@127.0.0.1/agent_gateway' };

const parse = (receipts: string, base = BASE) =>
  parseConfig(parseToml(`${base}\n[receipts]\n${receipts}`) as Record<string, unknown>, 'test.toml', ENV)
    .receipts;

describe('[receipts] config', () => {
  it('is off by default with every documented default', () => {
    expect(parse('')).toEqual({
      enabled: false,
      path: '/var/lib/agent-gateway/receipts',
      instanceId: hostname(),
      signingKey: undefined,
      includeDenied: false,
      onFailure: 'deny',
      checkpointReceipts: 1000,
      checkpointIntervalMs: 1000,
      fsyncIntervalMs: 1000,
      rotateBytes: 67_108_864,
      rotateIntervalS: 86_400,
      maxQueued: 100_000,
    });
  });

  it('reads every key', () => {
    const r = parse(`enabled = true
path = "/srv/receipts"
instance_id = "gw-eu-1"
signing_key = "pkcs11:token=agent-gateway;object=receipts"
include_denied = true
on_failure = "continue"
checkpoint_receipts = 1
checkpoint_interval_ms = 250
fsync_interval_ms = 0
rotate_bytes = 1048576
rotate_interval_s = 3600
max_queued = 10`);
    expect(r).toEqual({
      enabled: true,
      path: '/srv/receipts',
      instanceId: 'gw-eu-1',
      signingKey: 'pkcs11:token=agent-gateway;object=receipts',
      includeDenied: true,
      onFailure: 'continue',
      checkpointReceipts: 1,
      checkpointIntervalMs: 250,
      fsyncIntervalMs: 0,
      rotateBytes: 1_048_576,
      rotateIntervalS: 3600,
      maxQueued: 10,
    });
  });

  it.each([
    ['enabled = true', 'test.toml: receipts.signing_key: must be set when receipts.enabled is true'],
    ['enabled = true\nsigning_key = "k.pem"\ninstance_id = "gw/1"', 'receipts.instance_id: "gw/1" must be'],
    [`enabled = true\nsigning_key = "k.pem"\ninstance_id = "${'x'.repeat(65)}"`, 'receipts.instance_id'],
    ['on_failure = "ignore"', 'receipts.on_failure: must be one of "deny", "continue"'],
    ['checkpoint_receipts = 0', 'receipts.checkpoint_receipts: must be between 1 and'],
    ['fsync_interval_ms = -1', 'receipts.fsync_interval_ms: must be between 0 and'],
    ['rotate_bytes = 100', 'receipts.rotate_bytes: must be between 4096 and'],
    ['max_queued = "many"', 'receipts.max_queued: must be an integer'],
    ['include_denied = "yes"', 'receipts.include_denied: must be true or false'],
    ['signing_kee = "k.pem"', 'receipts.signing_kee: unknown key'],
  ])('%s is refused naming the key', (text, message) => {
    expect(() => parse(text)).toThrow(message);
  });

  it('a bad instance_id is no error while receipts are off (the host name is only the default)', () => {
    expect(parse('instance_id = "gw/1"').instanceId).toBe('gw/1');
  });

  it('with workers > 1 the instance id must leave room for -w<index>', () => {
    const base = BASE.replace('workers = 1', 'workers = 16');
    expect(
      parse(`enabled = true\nsigning_key = "k.pem"\ninstance_id = "${'x'.repeat(60)}"`, base).instanceId,
    ).toHaveLength(60);
    expect(() =>
      parse(`enabled = true\nsigning_key = "k.pem"\ninstance_id = "${'x'.repeat(61)}"`, base),
    ).toThrow('receipts.instance_id: with server.workers = 16');
  });

  it('loadConfigReceipts reads [receipts] without the database variable, and still refuses unknown keys', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'agw-receipts-config-'));
    const file = path.join(dir, 'gw.toml');
    writeFileSync(file, `${BASE}\n[receipts]\nenabled = true\nsigning_key = "k.pem"\ninstance_id = "gw-1"\n`);
    expect(loadConfigReceipts(file)).toMatchObject({
      enabled: true,
      signingKey: 'k.pem',
      instanceId: 'gw-1',
    });
    writeFileSync(file, `${BASE}\n[limits]\nmax_tunels = 1\n`);
    expect(() => loadConfigReceipts(file)).toThrow('limits.max_tunels: unknown key');
    // receipts-key names no chain: a host name that is no valid instance id does not stop it.
    writeFileSync(file, `${BASE}\n[receipts]\nenabled = true\nsigning_key = "k.pem"\ninstance_id = "gw/1"\n`);
    expect(loadConfigReceipts(file)).toMatchObject({ signingKey: 'k.pem', instanceId: 'gw/1' });
    expect(() => parse('enabled = true\nsigning_key = "k.pem"\ninstance_id = "gw/1"')).toThrow(
      'receipts.instance_id',
    );
  });
});

describe('gateway id', () => {
  const config = parse('enabled = true\nsigning_key = "k.pem"\ninstance_id = "gw-1"');
  it('is instance_id alone with one process, and -w<index> per cluster worker', () => {
    expect(gatewayIdOf(config, 1, {})).toBe('gw-1');
    expect(gatewayIdOf(config, 4, { AGENT_GATEWAY_WORKER_INDEX: '3' })).toBe('gw-1-w3');
    expect(() => gatewayIdOf(config, 4, {})).toThrow('AGENT_GATEWAY_WORKER_INDEX');
    expect(() => gatewayIdOf(config, 4, { AGENT_GATEWAY_WORKER_INDEX: '0' })).toThrow(
      'AGENT_GATEWAY_WORKER_INDEX',
    );
  });
});

describe('receipt key', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'agw-receipt-key-'));

  it('a PEM EC P-256 key signs, and key_id is the SHA-256 of its SPKI', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const file = path.join(dir, 'p256.pem');
    writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const signer = await openReceiptSigner(file);
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    expect(signer.spkiDer).toEqual(spki);
    expect(signer.keyId).toBe(keyIdOf(spki));
    const { verify } = await import('node:crypto');
    const sig = Buffer.from(await signer.sign(Buffer.from('bytes')), 'base64');
    expect(verify('sha256', Buffer.from('bytes'), { key: publicKey, dsaEncoding: 'der' }, sig)).toBe(true);
  });

  it('a missing file, a P-384 key and an RSA key are refused naming receipts.signing_key', async () => {
    const p384 = path.join(dir, 'p384.pem');
    writeFileSync(
      p384,
      generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ type: 'pkcs8', format: 'pem' }),
    );
    const rsa = path.join(dir, 'rsa.pem');
    writeFileSync(
      rsa,
      generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }),
    );
    for (const [file, why] of [
      [path.join(dir, 'missing.pem'), /cannot load a private key/],
      [p384, /expected an EC P-256 key/],
      [rsa, /expected an EC P-256 key/],
    ] as const) {
      const err = await openReceiptSigner(file).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ReceiptKeyError);
      expect((err as Error).message).toContain(`receipts.signing_key ${JSON.stringify(file)}`);
      expect((err as Error).message).toMatch(why);
    }
  });

  it('a pkcs11: URI names token and object, percent-decoded; anything else is refused', () => {
    expect(parsePkcs11Uri('pkcs11:token=agent-gateway;object=receipts')).toEqual({
      token: 'agent-gateway',
      object: 'receipts',
    });
    expect(parsePkcs11Uri('pkcs11:object=gw%20receipts;token=my%3Btoken;type=private')).toEqual({
      token: 'my;token',
      object: 'gw receipts',
    });
    for (const [uri, why] of [
      ['pkcs11:token=t', /must name token=<label>;object=<key label>/],
      ['pkcs11:token=t;object=k?pin-value=1234', /query attributes/],
      ['pkcs11:token=t;object=k;id=%01', /unknown attribute "id"/],
      ['pkcs11:token=t;object=k;type=public', /type must be private/],
      ['pkcs11:token=t;token=u;object=k', /given twice/],
      ['pkcs11:token=%zz;object=k', /percent-encoding/],
    ] as const) {
      expect(() => parsePkcs11Uri(uri)).toThrow(why);
    }
  });

  it('a pkcs11: key without the token environment is refused naming receipts.signing_key and the variable', async () => {
    const err = await openReceiptSigner('pkcs11:token=agent-gateway;object=receipts', {}).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ReceiptKeyError);
    expect((err as Error).message).toMatch(/receipts\.signing_key "pkcs11:.*TPM2_PKCS11_STORE is not set/);
  });
});
