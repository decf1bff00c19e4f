// Sidecar command line: the original's defaults (docs/contract.md "Sidecar"), the persistent-handle range,
// and errors that name the flag.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildCli,
  flagHostPort,
  isLoopbackHost,
  type ProvisionOptions,
  parseKeyHandle,
  type RunOptions,
  UsageError,
} from '../../sidecar/options.js';
import { engineKeyUri } from '../../sidecar/tpm-context.js';

let dir: string;
let cert: string;
let ca: string;
let pin: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'agw-sidecar-options-'));
  cert = path.join(dir, 'carrier.pem');
  ca = path.join(dir, 'ca.pem');
  pin = path.join(dir, 'pin');
  await writeFile(cert, 'x');
  await writeFile(ca, 'x');
  await writeFile(pin, '1234', { mode: 0o600 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function parse(args: string[], env: NodeJS.ProcessEnv = {}) {
  let run: RunOptions | undefined;
  let provision: ProvisionOptions | undefined;
  const cli = buildCli(
    {
      run: async (o) => {
        run = o;
      },
      provision: async (o) => {
        provision = o;
      },
    },
    env,
  );
  cli.exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
  await cli.parseAsync(['node', 'agent_gateway_sidecar', ...args]);
  return { run, provision };
}

describe('sidecar flags', () => {
  it("uses the original's defaults", async () => {
    const { run } = await parse(['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin]);
    expect(run?.listen).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 3128 });
    expect(run?.proxyToken).toBeUndefined();
    expect(run?.gateways).toEqual([{ host: '127.0.0.1', port: 8443 }]);
    expect(run?.gatewayName).toBeUndefined();
    expect(run?.identityOid).toBe('1.3.6.1.4.1.57264.1.1');
    expect(run?.tpm).toMatchObject({
      tcti: 'swtpm:host=127.0.0.1,port=2321',
      keyHandle: 0x81010004,
      token: 'agent-gateway-sidecar',
      keyLabel: '0x81010004',
      pinFile: pin,
      store: undefined,
    });
  });

  it('takes TCTI and store from the environment a TPM set-up exports', async () => {
    const { run } = await parse(['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin], {
      TPM2_PKCS11_TCTI: 'tabrmd:bus_type=session',
      TPM2_PKCS11_STORE: '/var/lib/store',
    });
    expect(run?.tpm.tcti).toBe('tabrmd:bus_type=session');
    expect(run?.tpm.store).toBe('/var/lib/store');
  });

  it('keeps every --gateway, in order', async () => {
    const base = ['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin];
    const { run } = await parse([...base, '--gateway', 'gw-a:8443', '--gateway', '[::1]:9443']);
    expect(run?.gateways).toEqual([
      { host: 'gw-a', port: 8443 },
      { host: '::1', port: 9443 },
    ]);
    await expect(parse([...base, '--gateway', 'gw-a:8443', '--gateway', 'gw-b'])).rejects.toThrow(
      /--gateway "gw-b" is not host:port/,
    );
  });

  it('derives the key label from --tpm-key-handle unless given', async () => {
    const base = ['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin];
    expect((await parse([...base, '--tpm-key-handle', '0x81000abc'])).run?.tpm.keyLabel).toBe('0x81000abc');
    const labelled = await parse([...base, '--pkcs11-key-label', 'agent-key']);
    expect(labelled.run?.tpm.keyLabel).toBe('agent-key');
  });

  it('names the flag in every refusal', async () => {
    const base = ['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin];
    await expect(parse(['--ca-cert', ca, '--pin-file', pin])).rejects.toThrow(/--client-cert is required/);
    await expect(parse(['--client-cert', cert, '--ca-cert', ca])).rejects.toThrow(/--pin-file is required/);
    await expect(parse([...base, '--ca-cert', path.join(dir, 'nope.pem')])).rejects.toThrow(
      /--ca-cert .*ENOENT/,
    );
    await expect(parse([...base, '--listen', '127.0.0.1'])).rejects.toThrow(
      /--listen "127.0.0.1" is not host:port/,
    );
    await expect(parse([...base, '--gateway', 'gw:0'])).rejects.toThrow(/--gateway: port 0/);
    await expect(parse([...base, '--tpm-key-handle', '0x81010004x'])).rejects.toThrow(/--tpm-key-handle/);
    await expect(parse([...base, '--client-identity-ext-oid', 'x.y'])).rejects.toThrow(
      /--client-identity-ext-oid/,
    );
    await expect(parse([...base, '--gateway-name', 'a b'])).rejects.toThrow(/--gateway-name/);
    await expect(parse([...base, '--log-level', 'loud'])).rejects.toThrow(/--log-level/);
    await expect(parse([...base, '--drain-timeout-ms', '-1'])).rejects.toThrow(/--drain-timeout-ms/);
    await expect(parse([...base, '--tpm-tcti', ''])).rejects.toThrow(/--tpm-tcti/);
    await expect(parse([...base, '--no-such-flag'])).rejects.toThrow(/unknown option/);
  });

  it('listens on a Unix socket, optionally for a group', async () => {
    const base = ['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin];
    expect((await parse([...base, '--listen', 'unix:/run/agent/proxy.sock'])).run?.listen).toEqual({
      kind: 'unix',
      path: '/run/agent/proxy.sock',
      gid: undefined,
    });
    const grouped = await parse([...base, '--listen', 'unix:/run/p.sock', '--socket-group', 'nogroup']);
    expect(grouped.run?.listen).toEqual({ kind: 'unix', path: '/run/p.sock', gid: 65534 });
    await expect(parse([...base, '--listen', 'unix:relative.sock'])).rejects.toThrow(/unix:\/absolute\/path/);
    await expect(
      parse([...base, '--listen', 'unix:/run/p.sock', '--socket-group', 'no-such-group-4711']),
    ).rejects.toThrow(/--socket-group "no-such-group-4711": no such group/);
    await expect(parse([...base, '--socket-group', 'nogroup'])).rejects.toThrow(
      /--socket-group needs --listen unix:/,
    );
  });

  it('refuses a non-loopback listen address unless --allow-non-loopback', async () => {
    const base = ['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin];
    for (const listen of ['0.0.0.0:3128', '[::]:3128', '10.1.2.3:3128', 'sidecar.example:3128']) {
      await expect(parse([...base, '--listen', listen]), listen).rejects.toThrow(
        new RegExp(
          `--listen ${listen.replace(/[[\].]/g, '\\$&')} is not a loopback address.*--allow-non-loopback`,
        ),
      );
    }
    const allowed = await parse([...base, '--listen', '0.0.0.0:3128', '--allow-non-loopback']);
    expect(allowed.run?.listen).toEqual({ kind: 'tcp', host: '0.0.0.0', port: 3128 });
  });

  it('reads the proxy token from a private file only', async () => {
    const base = ['--client-cert', cert, '--ca-cert', ca, '--pin-file', pin];
    const good = path.join(dir, 'token');
    await writeFile(good, 'a'.repeat(32) + '\n', { mode: 0o600 });
    expect((await parse([...base, '--proxy-token-file', good])).run?.proxyToken).toBe('a'.repeat(32));
    const open = path.join(dir, 'token-0644');
    await writeFile(open, 'b'.repeat(32), { mode: 0o644 });
    await expect(parse([...base, '--proxy-token-file', open])).rejects.toThrow(
      `--proxy-token-file ${open} has mode 0644`,
    );
    const short = path.join(dir, 'token-short');
    await writeFile(short, 'short', { mode: 0o600 });
    await expect(parse([...base, '--proxy-token-file', short])).rejects.toThrow(
      /16\.\.1024 characters, got 5/,
    );
    const spaced = path.join(dir, 'token-spaced');
    await writeFile(spaced, 'c'.repeat(16) + ' d', { mode: 0o600 });
    await expect(parse([...base, '--proxy-token-file', spaced])).rejects.toThrow(/printable ASCII/);
    await expect(parse([...base, '--proxy-token-file', path.join(dir, 'none')])).rejects.toThrow(
      /--proxy-token-file .*none: ENOENT/,
    );
  });

  it('parses the provision subcommand on its own flags', async () => {
    const { run, provision } = await parse([
      'provision',
      '--tpm-tcti',
      'tabrmd:bus_type=session',
      '--tpm-key-handle',
      '0x81010005',
      '--pin-file',
      pin,
      '--so-pin-file',
      pin,
      '--identity',
      'agent-alpha',
      '--out-cert',
      path.join(dir, 'out.pem'),
      '--out-spki',
      path.join(dir, 'out.der'),
    ]);
    expect(run).toBeUndefined();
    expect(provision).toMatchObject({
      identity: 'agent-alpha',
      validDays: 365,
      soPinFile: pin,
      tpm: { tcti: 'tabrmd:bus_type=session', keyHandle: 0x81010005, keyLabel: '0x81010005' },
    });
    await expect(parse(['provision', '--pin-file', pin, '--out-cert', 'x.pem'])).rejects.toThrow(
      /--identity/,
    );
    await expect(
      parse(['provision', '--pin-file', pin, '--identity', 'a\nb', '--out-cert', 'x']),
    ).rejects.toThrow(/control characters/);
    // The gateway denies identities over 256 bytes: provisioning one would make a useless certificate.
    await expect(
      parse(['provision', '--pin-file', pin, '--identity', 'é'.repeat(129), '--out-cert', 'x']),
    ).rejects.toThrow(/258 bytes, longer than 256/);
  });
});

describe('persistent handle range', () => {
  it('accepts 0x81000000..0x81ffffff, hex or decimal', () => {
    expect(parseKeyHandle('0x81000000')).toBe(0x81000000);
    expect(parseKeyHandle('0x81FFFFFF')).toBe(0x81ffffff);
    expect(parseKeyHandle(String(0x81010004))).toBe(0x81010004);
  });

  it('refuses transient, NV, and out-of-range handles', () => {
    for (const h of ['0x80000000', '0x80ffffff', '0x82000000', '0x01000000', '0x1810100040', 'handle', '']) {
      expect(() => parseKeyHandle(h), h).toThrow(UsageError);
    }
  });
});

describe('addresses', () => {
  it('parses host:port and bracketed IPv6', () => {
    expect(flagHostPort('--x', 'gateway.internal:8443')).toEqual({ host: 'gateway.internal', port: 8443 });
    expect(flagHostPort('--x', '[::1]:3128')).toEqual({ host: '::1', port: 3128 });
    expect(() => flagHostPort('--x', '[1:2:3]:3128')).toThrow(/not an IPv6 address/);
    expect(() => flagHostPort('--x', '::1:3128')).toThrow(/not host:port/);
    expect(() => flagHostPort('--x', 'h:65536')).toThrow(/outside 1..65535/);
  });

  it('knows which listen addresses only this machine can reach', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', 'localhost']) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', 'example.com']) expect(isLoopbackHost(h), h).toBe(false);
  });
});

describe('engine key URI', () => {
  it('percent-encodes token and label and points at the PIN file', () => {
    expect(engineKeyUri({ token: 'my token', keyLabel: '0x81010004', pinFile: '/run/pin;x' })).toBe(
      'pkcs11:token=my%20token;object=0x81010004;type=private?pin-source=file:/run/pin%3Bx',
    );
  });
});
