/**
 * Start-up checks and wiring. The sidecar refuses to start, naming the cause, rather than start in a
 * state where every CONNECT would fail later: flags, certificate, TPM reachability, the key at the
 * persistent handle, the certificate-to-key binding and the token login are all proven here.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { errorText } from '../core/error-text.js';
import { formatHostPort } from '../core/host-port.js';
import { certificateDer, readCarrierIdentity } from './carrier-identity.js';
import { GatewaySession } from './gateway-session.js';
import { isLoopbackHost, type RunOptions } from './options.js';
import { ProxyServer } from './proxy-server.js';
import { type Logger, startTracing, type Tracing } from './telemetry.js';
import { createTpmSecureContext, TpmContextError } from './tpm-context.js';
import {
  assertKeyAttributes,
  formatHandle,
  readPersistentKey,
  TpmUnreachableError,
  UnsuitableKeyError,
} from './tpm-tools.js';

export const EXIT_USAGE = 2;
/** Start-up refused: certificate, TPM, key or token problem. */
export const EXIT_STARTUP = 3;
/** The TPM stopped signing while running; a supervisor should restart the sidecar once it is back. */
export const EXIT_TPM_FAILURE = 4;

export type StartupFailure =
  | 'certificate_unreadable'
  | 'certificate_without_identity'
  | 'ca_unreadable'
  | 'tpm_unreachable'
  | 'tpm_key_missing'
  | 'tpm_key_unsuitable'
  | 'certificate_key_mismatch'
  | 'tpm_context_failed'
  | 'listen_failed';

export class SidecarStartupError extends Error {
  constructor(
    readonly reason: StartupFailure,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SidecarStartupError';
  }
}

export type RunningSidecar = {
  /** Where agents connect: `host:port` or `unix:/path`. */
  readonly address: string;
  readonly proxy: ProxyServer;
  readonly gateway: GatewaySession;
  readonly tracing: Tracing;
  /** Stop accepting, let tunnels run until the deadline, close the gateway connection. */
  drain(deadlineMs: number): Promise<{ cut: number }>;
};

export async function startSidecar(
  opts: RunOptions,
  logger: Logger,
  onTpmFailure: (err: Error) => void,
): Promise<RunningSidecar> {
  const handle = formatHandle(opts.tpm.keyHandle);
  const listenText =
    opts.listen.kind === 'unix' ? `unix:${opts.listen.path}` : `${opts.listen.host}:${opts.listen.port}`;
  if (opts.listen.kind === 'tcp' && !isLoopbackHost(opts.listen.host)) {
    // Only reachable with --allow-non-loopback (options.ts).
    logger.warn(
      { listen: listenText, proxy_credential: opts.proxyToken !== undefined },
      'listening on a non-loopback address: anyone who can reach it can use this machine identity',
    );
  } else if (opts.listen.kind === 'tcp' && opts.proxyToken === undefined) {
    logger.warn(
      { listen: listenText },
      'no --proxy-token-file: every local user and process can use this machine identity',
    );
  }

  const certPem = readText(opts.clientCertPath, 'certificate_unreadable', '--client-cert');
  const caPem = readText(opts.caCertPath, 'ca_unreadable', '--ca-cert');
  let certSpki: Buffer;
  let identity: string;
  try {
    const carrier = readCarrierIdentity(certificateDer(certPem), opts.identityOid);
    if (!carrier.ok) {
      throw new SidecarStartupError(
        'certificate_without_identity',
        `--client-cert ${opts.clientCertPath}: ${carrier.detail}; the gateway would deny every CONNECT`,
      );
    }
    certSpki = carrier.spkiDer;
    identity = carrier.identity;
  } catch (err) {
    if (err instanceof SidecarStartupError) throw err;
    throw new SidecarStartupError(
      'certificate_unreadable',
      `--client-cert ${opts.clientCertPath} is not a PEM certificate: ${errorText(err)}`,
    );
  }
  try {
    certificateDer(caPem);
  } catch (err) {
    throw new SidecarStartupError(
      'ca_unreadable',
      `--ca-cert ${opts.caCertPath} is not a PEM certificate: ${errorText(err)}`,
    );
  }

  const target = { tcti: opts.tpm.tcti, store: opts.tpm.store };
  let key: Awaited<ReturnType<typeof readPersistentKey>>;
  try {
    key = await readPersistentKey(target, opts.tpm.keyHandle);
  } catch (err) {
    if (err instanceof TpmUnreachableError)
      throw new SidecarStartupError('tpm_unreachable', err.message, { cause: err });
    throw new SidecarStartupError(
      'tpm_unreachable',
      `reading the key at ${handle} failed: ${errorText(err)}`,
      {
        cause: err,
      },
    );
  }
  if (key === undefined) {
    throw new SidecarStartupError(
      'tpm_key_missing',
      `no key is persisted at ${handle} in the TPM (${opts.tpm.tcti}); run \`agent_gateway_sidecar provision\` first`,
    );
  }
  try {
    assertKeyAttributes(handle, key.attributes);
  } catch (err) {
    if (err instanceof UnsuitableKeyError) throw new SidecarStartupError('tpm_key_unsuitable', err.message);
    throw err;
  }
  if (!key.spkiDer.equals(certSpki)) {
    throw new SidecarStartupError(
      'certificate_key_mismatch',
      `--client-cert ${opts.clientCertPath} carries public key ${fingerprint(certSpki)}, but the TPM key at ${handle} ` +
        `is ${fingerprint(key.spkiDer)}: re-run provision to issue a carrier certificate for this key`,
    );
  }

  let secureContext: ReturnType<typeof createTpmSecureContext>;
  try {
    secureContext = createTpmSecureContext(opts.tpm, certPem, caPem);
  } catch (err) {
    if (err instanceof TpmContextError) {
      const reason =
        err.kind === 'certificate_key_mismatch' ? 'certificate_key_mismatch' : 'tpm_context_failed';
      throw new SidecarStartupError(reason, err.message, { cause: err });
    }
    throw err;
  }

  const tracing = await startTracing(logger);
  const gateway = new GatewaySession({
    gateways: opts.gateways,
    servername: opts.gatewayName,
    secureContext,
    logger: logger.child({ component: 'gateway-session' }),
    connectTimeoutMs: opts.gatewayConnectTimeoutMs,
    onTpmFailure,
  });
  const proxy = new ProxyServer({
    listen: opts.listen,
    proxyToken: opts.proxyToken,
    gateway,
    tracing,
    logger: logger.child({ component: 'proxy' }),
  });
  let address: string;
  try {
    address = await proxy.listen();
  } catch (err) {
    const message = errorText(err);
    // agent-access errors already name the flag and the path.
    throw new SidecarStartupError(
      'listen_failed',
      message.startsWith('--') ? message : `--listen ${listenText}: ${message}`,
      { cause: err },
    );
  }
  logger.info(
    {
      listen: address,
      proxy_credential: opts.proxyToken !== undefined,
      gateways: opts.gateways.map((g) => formatHostPort(g.host, g.port)),
      gateway_name: opts.gatewayName,
      identity,
      tpm_key_handle: handle,
      pkcs11_token: opts.tpm.token,
      pkcs11_key_label: opts.tpm.keyLabel,
      spki_sha256: fingerprint(certSpki),
      tracing: tracing.enabled,
    },
    'sidecar listening',
  );

  return {
    address,
    proxy,
    gateway,
    tracing,
    async drain(deadlineMs) {
      const cut = await proxy.drain(deadlineMs);
      await Promise.race([gateway.close(), new Promise((r) => setTimeout(r, 2_000).unref())]);
      gateway.destroy();
      await tracing.shutdown();
      return { cut };
    },
  };
}

function readText(path: string, reason: StartupFailure, flag: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new SidecarStartupError(reason, `${flag} ${path}: ${errorText(err)}`);
  }
}

function fingerprint(spki: Buffer): string {
  return `sha256:${createHash('sha256').update(spki).digest('hex')}`;
}
