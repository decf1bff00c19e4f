/**
 * Command line of `agent_gateway_sidecar` (the original's flags plus this project's additions;
 * docs/contract.md "Sidecar") and of its `provision` subcommand. Commander only collects strings;
 * everything is validated here into typed options, and every error names the flag, so a misconfigured
 * sidecar refuses to start with a message that says which flag to fix.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import { isIP } from 'node:net';
import { Command, Option } from 'commander';
import { type HostPort, parseHostPort } from '../core/host-port.js';
import { DEFAULT_IDENTITY_OID, identityLengthError, isValidOid } from '../core/identity-value.js';
import {
  AgentAccessError,
  type ListenAddress,
  readProxyToken,
  resolveGroup,
  unixSocketPath,
} from './agent-access.js';
import { defaultKeyLabel, type TpmKeyConfig } from './tpm-context.js';
import { formatHandle, PERSISTENT_HANDLE_MAX, PERSISTENT_HANDLE_MIN } from './tpm-tools.js';

export const DEFAULT_LISTEN = '127.0.0.1:3128';
export const DEFAULT_GATEWAY = '127.0.0.1:8443';
export const DEFAULT_TCTI = 'swtpm:host=127.0.0.1,port=2321';
export const DEFAULT_KEY_HANDLE = '0x81010004';
export const DEFAULT_TOKEN = 'agent-gateway-sidecar';
const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

export type RunOptions = {
  readonly listen: ListenAddress;
  /** Every CONNECT must carry it (Proxy-Authorization: Basic); undefined = no proxy credential. */
  readonly proxyToken: string | undefined;
  /** Every --gateway, in order (docs/contract.md "Sidecar": one connection, failover to the next). */
  readonly gateways: readonly HostPort[];
  /** Name every gateway's certificate must match (and the SNI sent); undefined = each --gateway host. */
  readonly gatewayName: string | undefined;
  readonly clientCertPath: string;
  readonly caCertPath: string;
  readonly identityOid: string;
  readonly tpm: TpmKeyConfig;
  readonly drainTimeoutMs: number;
  readonly gatewayConnectTimeoutMs: number;
  readonly logLevel: string;
};

export type ProvisionOptions = {
  readonly tpm: TpmKeyConfig;
  /** SO PIN file; needed only when the token does not exist yet. */
  readonly soPinFile: string | undefined;
  readonly identity: string;
  readonly identityOid: string;
  readonly outCert: string;
  readonly outSpki: string | undefined;
  readonly validDays: number;
  readonly logLevel: string;
};

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

type RawTpm = {
  tpmTcti: string;
  tpmKeyHandle: string;
  pkcs11Store?: string;
  pkcs11Token: string;
  pkcs11KeyLabel?: string;
  pkcs11Module?: string;
  pinFile?: string;
  clientIdentityExtOid: string;
  logLevel: string;
};

type RawRun = RawTpm & {
  listen: string;
  allowNonLoopback?: boolean;
  socketGroup?: string;
  proxyTokenFile?: string;
  gateway?: string[];
  gatewayName?: string;
  clientCert?: string;
  caCert?: string;
  drainTimeoutMs: string;
  gatewayConnectTimeoutMs: string;
};

type RawProvision = RawTpm & {
  soPinFile?: string;
  identity?: string;
  outCert?: string;
  outSpki?: string;
  validDays: string;
};

export type CliActions = {
  run(options: RunOptions): Promise<void>;
  provision(options: ProvisionOptions): Promise<void>;
};

function addTpmOptions(cmd: Command, env: NodeJS.ProcessEnv): Command {
  return cmd
    .addOption(
      new Option('--tpm-tcti <tcti>', 'TSS2 TCTI of the TPM (device:/dev/tpmrm0 on real hardware)').default(
        env['TPM2_PKCS11_TCTI'] ?? env['TPM2TOOLS_TCTI'] ?? DEFAULT_TCTI,
      ),
    )
    .addOption(
      new Option(
        '--tpm-key-handle <handle>',
        'persistent handle of the P-256 key (0x81000000..0x81ffffff)',
      ).default(DEFAULT_KEY_HANDLE),
    )
    .addOption(
      new Option('--pkcs11-store <dir>', 'tpm2-pkcs11 store directory ($TPM2_PKCS11_STORE)').default(
        env['TPM2_PKCS11_STORE'],
      ),
    )
    .addOption(
      new Option('--pkcs11-token <label>', 'tpm2-pkcs11 token holding the linked key').default(DEFAULT_TOKEN),
    )
    .addOption(
      new Option(
        '--pkcs11-key-label <label>',
        'label of the linked key object (default: the handle, e.g. 0x81010004)',
      ),
    )
    .addOption(
      new Option(
        '--pkcs11-module <path>',
        'libtpm2_pkcs11.so ($PKCS11_MODULE_PATH, else the system one)',
      ).default(env['PKCS11_MODULE_PATH']),
    )
    .addOption(new Option('--pin-file <path>', 'file holding the token user PIN (mode 0600)'))
    .addOption(
      new Option('--client-identity-ext-oid <oid>', 'OID of the identity extension').default(
        DEFAULT_IDENTITY_OID,
      ),
    )
    .addOption(
      new Option('--log-level <level>', `log level (${LOG_LEVELS.join(', ')})`).default(
        env['LOG_LEVEL'] ?? 'info',
      ),
    );
}

/** The program; `actions` receive validated options. */
export function buildCli(actions: CliActions, env: NodeJS.ProcessEnv = process.env): Command {
  const program = new Command('agent_gateway_sidecar')
    .description(
      'Local HTTP CONNECT proxy for agents (HTTPS_PROXY=http://127.0.0.1:3128): forwards each CONNECT over ' +
        'one mTLS HTTP/2 connection to agent_gateway, authenticated by a non-exportable P-256 key in a TPM.',
    )
    .enablePositionalOptions()
    .showHelpAfterError('(run with --help for usage)');
  addTpmOptions(program, env)
    .addOption(
      new Option('--listen <address>', 'where agents connect: loopback host:port or unix:/path').default(
        DEFAULT_LISTEN,
      ),
    )
    .addOption(new Option('--allow-non-loopback', 'allow a --listen address other machines can reach'))
    .addOption(
      new Option('--socket-group <group>', 'with --listen unix:/path, let this group use the socket (0660)'),
    )
    .addOption(
      new Option(
        '--proxy-token-file <path>',
        'file (mode 0600) with a token every CONNECT must carry as Proxy-Authorization: Basic',
      ),
    )
    .addOption(
      new Option(
        '--gateway <host:port>',
        `agent_gateway address (default ${DEFAULT_GATEWAY}); repeat for several: one connection, to the ` +
          'first that works, moving to the next when a gateway fails or drains',
      ).argParser((value: string, previous: string[] | undefined) => [...(previous ?? []), value]),
    )
    .addOption(
      new Option(
        '--gateway-name <name>',
        "name the gateway's certificate must carry (default: the --gateway host)",
      ),
    )
    .addOption(new Option('--client-cert <path>', 'carrier certificate (PEM) for the TPM key'))
    .addOption(new Option('--ca-cert <path>', "CA certificate (PEM) that issued the gateway's certificate"))
    .addOption(
      new Option(
        '--drain-timeout-ms <ms>',
        'on SIGTERM, how long open tunnels may run before they are cut',
      ).default('30000'),
    )
    .addOption(new Option('--gateway-connect-timeout-ms <ms>', 'TLS+HTTP/2 connect timeout').default('10000'))
    .action(async (raw: RawRun) => actions.run(validateRun(raw)));

  addTpmOptions(
    program
      .command('provision')
      .description(
        'Create (or reuse) the persistent TPM key at --tpm-key-handle, link it into the tpm2-pkcs11 token, ' +
          'and write a carrier certificate for it with the identity extension.',
      ),
    env,
  )
    .addOption(new Option('--identity <id>', 'client identity to put in the carrier certificate'))
    .addOption(new Option('--out-cert <path>', 'where to write the carrier certificate (PEM)'))
    .addOption(new Option('--out-spki <path>', 'where to write the public key (SubjectPublicKeyInfo DER)'))
    .addOption(new Option('--so-pin-file <path>', 'token SO PIN file, needed only to create the token'))
    .addOption(new Option('--valid-days <days>', 'carrier certificate lifetime').default('365'))
    .action(async (raw: RawProvision) => actions.provision(validateProvision(raw)));
  return program;
}

export function validateRun(raw: RawRun): RunOptions {
  const tpm = validateTpm(raw);
  const gatewayName = raw.gatewayName?.trim();
  if (gatewayName !== undefined && (gatewayName === '' || /[\s/:]/.test(gatewayName))) {
    throw new UsageError(`--gateway-name ${JSON.stringify(raw.gatewayName)} is not a host name`);
  }
  return {
    ...agentAccess(raw),
    gateways: (raw.gateway ?? [DEFAULT_GATEWAY]).map((g) => flagHostPort('--gateway', g)),
    gatewayName,
    clientCertPath: readableFile('--client-cert', raw.clientCert),
    caCertPath: readableFile('--ca-cert', raw.caCert),
    identityOid: tpm.identityOid,
    tpm: tpm.key,
    drainTimeoutMs: integer('--drain-timeout-ms', raw.drainTimeoutMs, 0, 86_400_000),
    gatewayConnectTimeoutMs: integer(
      '--gateway-connect-timeout-ms',
      raw.gatewayConnectTimeoutMs,
      100,
      600_000,
    ),
    logLevel: tpm.logLevel,
  };
}

/** Who may use the sidecar: the listen address and the proxy credential (sidecar/agent-access.ts). */
function agentAccess(raw: RawRun): Pick<RunOptions, 'listen' | 'proxyToken'> {
  try {
    const socketPath = unixSocketPath(raw.listen.trim());
    let listen: ListenAddress;
    if (socketPath !== undefined) {
      const gid = raw.socketGroup === undefined ? undefined : resolveGroup(raw.socketGroup);
      listen = { kind: 'unix', path: socketPath, gid };
    } else {
      if (raw.socketGroup !== undefined) throw new UsageError('--socket-group needs --listen unix:/path');
      listen = { kind: 'tcp', ...flagHostPort('--listen', raw.listen) };
      if (!isLoopbackHost(listen.host) && raw.allowNonLoopback !== true) {
        throw new UsageError(
          `--listen ${raw.listen} is not a loopback address: anyone who can reach it could use this ` +
            "machine's TPM identity; pass --allow-non-loopback if that is intended",
        );
      }
    }
    const proxyToken = raw.proxyTokenFile === undefined ? undefined : readProxyToken(raw.proxyTokenFile);
    return { listen, proxyToken };
  } catch (err) {
    if (err instanceof AgentAccessError) throw new UsageError(err.message);
    throw err;
  }
}

export function validateProvision(raw: RawProvision): ProvisionOptions {
  const tpm = validateTpm(raw);
  const identity = raw.identity;
  if (identity === undefined || identity === '') throw new UsageError('--identity is required');
  if (/[\u0000-\u001f\u007f]/.test(identity))
    throw new UsageError('--identity must not contain control characters');
  const tooLong = identityLengthError(identity);
  if (tooLong !== undefined) throw new UsageError(`--identity: ${tooLong}; the gateway would deny it`);
  if (raw.outCert === undefined || raw.outCert === '') throw new UsageError('--out-cert is required');
  return {
    tpm: tpm.key,
    soPinFile: raw.soPinFile === undefined ? undefined : readableFile('--so-pin-file', raw.soPinFile),
    identity,
    identityOid: tpm.identityOid,
    outCert: raw.outCert,
    outSpki: raw.outSpki,
    validDays: integer('--valid-days', raw.validDays, 1, 36_500),
    logLevel: tpm.logLevel,
  };
}

function validateTpm(raw: RawTpm): { key: TpmKeyConfig; identityOid: string; logLevel: string } {
  const keyHandle = parseKeyHandle(raw.tpmKeyHandle);
  const tcti = raw.tpmTcti.trim();
  if (tcti === '' || !/^[a-z0-9_-]+(:.*)?$/i.test(tcti)) {
    throw new UsageError(`--tpm-tcti ${JSON.stringify(raw.tpmTcti)} is not a TCTI such as ${DEFAULT_TCTI}`);
  }
  if (!isValidOid(raw.clientIdentityExtOid)) {
    throw new UsageError(
      `--client-identity-ext-oid ${JSON.stringify(raw.clientIdentityExtOid)} is not a dotted OID`,
    );
  }
  if (!LOG_LEVELS.includes(raw.logLevel)) {
    throw new UsageError(`--log-level ${JSON.stringify(raw.logLevel)}: use one of ${LOG_LEVELS.join(', ')}`);
  }
  if (raw.pkcs11Token.trim() === '') throw new UsageError('--pkcs11-token must not be empty');
  const pinFile = readableFile('--pin-file', raw.pinFile);
  return {
    key: {
      tcti,
      keyHandle,
      store: raw.pkcs11Store === undefined || raw.pkcs11Store === '' ? undefined : raw.pkcs11Store,
      token: raw.pkcs11Token,
      keyLabel: raw.pkcs11KeyLabel ?? defaultKeyLabel(keyHandle),
      pinFile,
      modulePath: raw.pkcs11Module === undefined || raw.pkcs11Module === '' ? undefined : raw.pkcs11Module,
    },
    identityOid: raw.clientIdentityExtOid,
    logLevel: raw.logLevel,
  };
}

export function parseKeyHandle(text: string): number {
  const t = text.trim();
  if (!/^(0x[0-9a-f]{1,8}|\d{1,10})$/i.test(t)) {
    throw new UsageError(
      `--tpm-key-handle ${JSON.stringify(text)} is not a handle such as ${DEFAULT_KEY_HANDLE}`,
    );
  }
  const handle = Number(t);
  if (handle < PERSISTENT_HANDLE_MIN || handle > PERSISTENT_HANDLE_MAX) {
    throw new UsageError(
      `--tpm-key-handle ${formatHandle(handle)} is outside the persistent range ` +
        `${formatHandle(PERSISTENT_HANDLE_MIN)}..${formatHandle(PERSISTENT_HANDLE_MAX)}`,
    );
  }
  return handle;
}

/** A `host:port` flag value (core/host-port.ts), or a UsageError naming the flag. */
export function flagHostPort(flag: string, text: string): HostPort {
  const parsed = parseHostPort(text);
  if (parsed.ok) return parsed.value;
  switch (parsed.problem) {
    case 'syntax':
      throw new UsageError(`${flag} ${JSON.stringify(text)} is not host:port (IPv6 as [addr]:port)`);
    case 'not_ipv6':
      throw new UsageError(`${flag}: ${parsed.host} is not an IPv6 address`);
    case 'port_range':
      throw new UsageError(`${flag}: port ${parsed.port} is outside 1..65535`);
  }
}

/** True for addresses only this machine can reach. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

function readableFile(flag: string, path: string | undefined): string {
  if (path === undefined || path === '') throw new UsageError(`${flag} is required`);
  try {
    accessSync(path, fsConstants.R_OK);
  } catch (err) {
    throw new UsageError(`${flag} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return path;
}

function integer(flag: string, text: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim()))
    throw new UsageError(`${flag} ${JSON.stringify(text)} is not a whole number`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${flag} must be between ${min} and ${max}, got ${n}`);
  return n;
}
