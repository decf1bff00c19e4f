#!/usr/bin/env -S node --initial-heap-size=64 --max-semi-space-size=1
/**
 * agent_gateway_sidecar: flags → start, signals → drain. Exit codes: 0 clean (including a SIGTERM
 * drain), 2 bad flags, 3 start-up refused (certificate, TPM, key, token), 4 TPM failure while running.
 *
 * The interpreter line sizes V8's heap for a sidecar. The 64 MB initial heap is the gateway's, for the
 * same reason (gateway/main.ts): without it full mark-compacts run back to back while bytes flow. The
 * young generation is 1 MB, not the gateway's 8: every chunk tunnelled is a Buffer whose memory lives
 * outside the V8 heap until a scavenge frees it, and a sidecar idles most of its life, when nothing
 * collects, so a larger young generation leaves an idle sidecar holding tens of MiB more after its
 * last transfer, for no CPU saving (figures: bench/README.md "Idle memory").
 */
import { CommanderError } from 'commander';
import { errorText } from '../core/error-text.js';
import { buildCli, UsageError } from './options.js';
import { ProvisionError, provision } from './provision.js';
import {
  EXIT_STARTUP,
  EXIT_TPM_FAILURE,
  EXIT_USAGE,
  type RunningSidecar,
  SidecarStartupError,
  startSidecar,
} from './start.js';
import { createLogger, type Logger } from './telemetry.js';
import { TpmContextError } from './tpm-context.js';
import { TpmCommandError, TpmUnreachableError, UnsuitableKeyError } from './tpm-tools.js';

let logger: Logger | undefined;

const cli = buildCli({
  async run(opts) {
    const log = createLogger(opts.logLevel);
    logger = log;
    const onTpmFailure = (err: Error) => {
      log.fatal(
        { reason: 'tpm_signing_failed', err: errorText(err) },
        'the TPM could not sign the gateway handshake; exiting so a supervisor can restart the sidecar once the TPM is back',
      );
      process.exit(EXIT_TPM_FAILURE);
    };
    // Handlers go in before start-up so a signal that arrives while starting is not fatal by default.
    let sidecar: RunningSidecar | undefined;
    let draining = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (sidecar === undefined) {
        log.info({ signal }, 'stopped during start-up');
        process.exit(0);
      }
      if (draining) {
        log.warn({ signal }, 'second signal: exiting without waiting for tunnels');
        process.exit(0);
      }
      draining = true;
      log.info(
        { signal, active_tunnels: sidecar.proxy.activeTunnels, drain_timeout_ms: opts.drainTimeoutMs },
        'draining: no new CONNECTs, waiting for open tunnels',
      );
      sidecar.drain(opts.drainTimeoutMs).then(
        ({ cut }) => {
          log.info({ tunnels_cut: cut }, 'sidecar stopped');
          process.exit(0);
        },
        (err: unknown) => {
          log.error({ err: errorText(err) }, 'drain failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    sidecar = await startSidecar(opts, log, onTpmFailure);
  },
  async provision(opts) {
    const log = createLogger(opts.logLevel);
    logger = log;
    await provision(opts, log);
    // The engine and the TSS may keep threads alive; provisioning is done.
    process.exit(0);
  },
});

cli.exitOverride();
try {
  await cli.parseAsync(process.argv);
} catch (err) {
  process.exit(report(err));
}

function report(err: unknown): number {
  if (err instanceof CommanderError) {
    // Commander has printed the message (or the help) already.
    return err.exitCode === 0 ? 0 : EXIT_USAGE;
  }
  if (err instanceof UsageError) {
    process.stderr.write(`agent_gateway_sidecar: ${err.message}\n(run with --help for usage)\n`);
    return EXIT_USAGE;
  }
  const reason =
    err instanceof SidecarStartupError
      ? err.reason
      : err instanceof TpmContextError
        ? err.kind
        : err instanceof TpmUnreachableError
          ? 'tpm_unreachable'
          : err instanceof UnsuitableKeyError
            ? 'tpm_key_unsuitable'
            : err instanceof ProvisionError || err instanceof TpmCommandError
              ? 'provision_failed'
              : 'internal_error';
  const message = errorText(err);
  logger?.fatal({ reason, err: message }, 'agent_gateway_sidecar cannot start');
  process.stderr.write(`agent_gateway_sidecar: ${message}\n`);
  return reason === 'internal_error' ? 1 : EXIT_STARTUP;
}
