// The sidecar end to end, its key and its start: the key the real provisioning CLI made in a real swtpm
// (behind tpm2-abrmd), and how the sidecar refuses or warns at start-up; the rest of the set-up (registry,
// gateway, destination) is test/support/sidecar-suite.ts. A running sidecar's tunnels are in
// sidecar-tunnels.test.ts. Needs `npm run build` (dist/sidecar/main.js, dist/gateway/main.js).
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createCarrier } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { runCommand } from '../../dev-support/run-command.js';
import type { TpmHandle } from '../../dev-support/swtpm.js';
import { SIDECAR_HANDLE, SIDECAR_TOKEN } from '../support/sidecar.js';
import { type SidecarSuite, startSidecarSuite } from '../support/sidecar-suite.js';

const IDENTITY = 'agent-sidecar-e2e';
const HANDLE = SIDECAR_HANDLE;
const TOKEN = SIDECAR_TOKEN;

describe.sequential('sidecar with a TPM key, end to end', () => {
  const adminUrl = inject('pgAdminUrl');
  let suite: SidecarSuite;
  let dir: string;
  let tpm: TpmHandle;
  let spkiDer: Buffer;
  let sidecarArgs: SidecarSuite['sidecarArgs'];
  let spawnSidecar: SidecarSuite['spawnSidecar'];

  beforeAll(async () => {
    suite = await startSidecarSuite(adminUrl, 'sidecar_startup_e2e', IDENTITY);
    ({ dir, tpm, spkiDer, sidecarArgs, spawnSidecar } = suite);
  }, 240_000);

  afterAll(async () => {
    await suite?.stop();
  });

  it('provisions a non-exportable P-256 key at the persistent handle, linked into the token', async () => {
    const pub = await runCommand('tpm2_readpublic', ['-c', HANDLE], { env: { ...process.env, ...tpm.env } });
    expect(pub.code).toBe(0);
    const attributes = /attributes:\s*\n\s+value:\s*(\S+)/.exec(pub.stdout)?.[1]?.split('|') ?? [];
    expect(attributes).toEqual(
      expect.arrayContaining(['fixedtpm', 'fixedparent', 'sensitivedataorigin', 'sign']),
    );
    expect(attributes).not.toContain('decrypt');
    // The token object for the handle is the same key (pkcs11-tool reads the public part, no PIN).
    const tokenPub = path.join(dir, 'token-pub.der');
    const r2 = await runCommand(
      'pkcs11-tool',
      [
        '--module',
        tpm.env.PKCS11_MODULE_PATH,
        '--token-label',
        TOKEN,
        '--read-object',
        '--type',
        'pubkey',
        '--label',
        HANDLE,
        '-o',
        tokenPub,
      ],
      { env: { ...process.env, ...tpm.env } },
    );
    expect(r2.code, r2.stderr).toBe(0);
    expect((await readFile(tokenPub)).equals(spkiDer)).toBe(true);
    // As a PKCS#11 object the private key is sensitive and was never extractable.
    const objects = await runCommand(
      'pkcs11-tool',
      [
        '--module',
        tpm.env.PKCS11_MODULE_PATH,
        '--token-label',
        TOKEN,
        '--login',
        '--pin',
        'user-pin-4711',
        '--list-objects',
        '--type',
        'privkey',
      ],
      { env: { ...process.env, ...tpm.env } },
    );
    expect(objects.code, objects.stderr).toBe(0);
    expect(objects.stdout).toContain(`label:      ${HANDLE}`);
    expect(objects.stdout).toMatch(/Access:\s+sensitive, always sensitive, never extractable, local/);
  });

  it('refuses to start on invalid flags, naming the flag', async () => {
    const bad = spawnSidecar(sidecarArgs({ '--tpm-key-handle': '0x80000001' }));
    expect((await bad.exited).code).toBe(2);
    expect(bad.tail()).toContain('--tpm-key-handle 0x80000001 is outside the persistent range');
  });

  it('refuses to start with a certificate for another key', async () => {
    const other = await createCarrier(IDENTITY);
    const swapped = path.join(dir, 'swapped.pem');
    await writeFile(swapped, other.certPem);
    const proc = spawnSidecar(sidecarArgs({ '--client-cert': swapped }));
    const info = await proc.exited;
    expect(info.code).toBe(3);
    const fatal = proc.lines.find((l) => l.json?.['level'] === 'fatal')?.json;
    expect(fatal?.['reason']).toBe('certificate_key_mismatch');
    expect(String(fatal?.['err'])).toMatch(/is not the TPM key|carries public key/);
  });

  it('refuses to start when the TPM is unreachable', async () => {
    const closed = await freePort();
    const proc = spawnSidecar(sidecarArgs({ '--tpm-tcti': `swtpm:host=127.0.0.1,port=${closed}` }));
    const info = await proc.exited;
    expect(info.code).toBe(3);
    const fatal = proc.lines.find((l) => l.json?.['level'] === 'fatal')?.json;
    expect(fatal?.['reason']).toBe('tpm_unreachable');
    expect(String(fatal?.['err'])).toContain('TPM unreachable');
  });

  it('refuses to start when nothing is persisted at the handle', async () => {
    const proc = spawnSidecar(sidecarArgs({ '--tpm-key-handle': '0x81010099' }));
    const info = await proc.exited;
    expect(info.code).toBe(3);
    expect(proc.lines.find((l) => l.json?.['level'] === 'fatal')?.json?.['reason']).toBe('tpm_key_missing');
  });

  it('warns when listening on a non-loopback address it was allowed', async () => {
    const port = await freePort();
    const proc = spawnSidecar(sidecarArgs({ '--listen': `0.0.0.0:${port}`, '--allow-non-loopback': '' }));
    const warn = await proc.waitForLog((l) => l.json?.['level'] === 'warn', 30_000);
    expect(String(warn.json?.['msg'])).toContain('non-loopback');
    await proc.waitForLog((l) => l.json?.['msg'] === 'sidecar listening', 30_000);
    expect(await proc.stop()).toBe(0);
  });
});
