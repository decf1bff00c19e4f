#!/usr/bin/env -S node --initial-heap-size=64 --max-semi-space-size=8
/**
 * agent_gateway --config config.toml
 * agent_gateway receipts-key --config config.toml   (the receipt public key, for auditors)
 *
 * The interpreter line sizes V8's heap for a proxy. With V8's defaults a forwarding gateway's live old
 * generation leaves no more room below the allocation limit than one young generation, so nearly every
 * scavenge is followed by a full mark-compact; a 64 MB initial heap and an 8 MB young generation keep
 * most of them away (figures: bench/README.md, "Third round", item 3; re-measured in "Heap flags on
 * Node 24"). Cluster workers inherit the flags through process.execArgv; NODE_OPTIONS accepts neither,
 * and `node dist/gateway/main.js` bypasses this line: pass the flags yourself then.
 *
 * Exit codes: 0 after a clean drain; 2 for a bad command line or config; 1 when the gateway cannot
 * start (registry schema missing or unknown, database unreachable, TLS material bad, port taken).
 * Signals: SIGTERM/SIGINT drain (a second one resets what is left), SIGHUP reloads the TLS certificate
 * and the trust roots (policy.trust_roots, policy.trust_root_files).
 */
import cluster from 'node:cluster';
import { Command, CommanderError } from 'commander';
import { errorText } from '../core/error-text.js';
import { ConfigError, type GatewayConfig, loadConfig } from './config.js';
import type { RunningGateway } from './gateway.js';
import type { Logger } from './telemetry.js';

// Everything past config validation is imported on demand: a config error is reported without first
// loading pg, OpenTelemetry, prom-client and the X.509 stack.
const load = () =>
  Promise.all([
    import('./cluster.js'),
    import('./gateway.js'),
    import('./metrics.js'),
    import('./telemetry.js'),
  ]);

const EXIT_USAGE = 2;

function parseArgs(argv: readonly string[]): { config: string } {
  const program = new Command()
    .name('agent_gateway')
    .description(
      'mTLS HTTP/2 CONNECT egress gateway: agents reach only destinations a principal signed for them',
    )
    .requiredOption('--config <path>', 'gateway configuration (TOML)')
    .exitOverride();
  try {
    program.parse(argv as string[]);
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    throw err;
  }
  return program.opts<{ config: string }>();
}

async function main(): Promise<number> {
  if (process.argv[2] === 'receipts-key') {
    const { receiptsKey } = await import('./receipts/receipts-key-command.js');
    return receiptsKey(process.argv.slice(3));
  }
  const args = parseArgs(process.argv);
  let config: GatewayConfig;
  try {
    config = loadConfig(args.config);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`agent_gateway: invalid configuration: ${err.message}\n`);
    return EXIT_USAGE;
  }

  if (cluster.isPrimary && config.server.workers > 1) {
    const [{ runPrimary }, { GatewayStartupError }, , { createLogger }] = await load();
    const logger = createLogger(config.observability);
    let code: number;
    try {
      code = await runPrimary(config, logger);
    } catch (err) {
      code = startupFailed(err, logger, GatewayStartupError);
    }
    await new Promise<void>((resolve) => logger.flush(() => resolve()));
    return code;
  }
  return serve(config);
}

/** One serving process: the whole gateway (workers = 1) or a cluster worker. */
async function serve(config: GatewayConfig): Promise<number> {
  const isWorker = cluster.isWorker;
  const [
    { attachWorker, perWorkerConnections, reportStartupFailure },
    { GatewayStartupError, startGateway },
    { metrics },
    { startTelemetry },
  ] = await load();
  const telemetry = await startTelemetry(config.observability);
  const { logger } = telemetry;
  if (isWorker) {
    // The primary's AggregatorRegistry asks each worker over IPC; prom-client answers only once an
    // AggregatorRegistry exists in the worker too, and only for the registries named here.
    const { AggregatorRegistry } = await import('prom-client');
    new AggregatorRegistry();
    AggregatorRegistry.setRegistries([metrics.registry]);
  }

  let gateway: RunningGateway;
  try {
    gateway = await startGateway(config, telemetry, {
      admin: !isWorker,
      maxConnections: isWorker ? perWorkerConnections(config) : config.limits.maxConnections,
      metrics,
    });
  } catch (err) {
    const code = startupFailed(err, logger, GatewayStartupError);
    if (isWorker) await reportStartupFailure(errorText(err), code);
    await telemetry.shutdown();
    return code;
  }

  const stopped = new Promise<void>((resolve) => {
    let draining = false;
    const drain = (why: string) => {
      if (draining) {
        // A cluster worker gets the same shutdown twice (the signal to the process group and the
        // primary's message): only the primary decides when a repeat means "force".
        if (isWorker) return;
        logger.warn({ reason: why }, 'second shutdown request; resetting open tunnels');
        gateway.forceClose();
        return;
      }
      draining = true;
      logger.info({ reason: why, drain_timeout_ms: config.server.drainTimeoutMs }, 'shutdown requested');
      gateway.shutdown().then(resolve, (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        resolve();
      });
    };
    process.on('SIGTERM', () => drain('SIGTERM'));
    process.on('SIGINT', () => drain('SIGINT'));
    process.on('SIGHUP', () => {
      logger.info('SIGHUP: reloading TLS certificate and trust roots');
      gateway.reloadTls();
      gateway.reloadTrustRoots();
    });
    if (isWorker) attachWorker(gateway, logger, () => drain('primary'));
  });
  await stopped;
  logger.info('stopped');
  await telemetry.shutdown();
  return 0;
}

function startupFailed(
  err: unknown,
  logger: Logger,
  GatewayStartupError: typeof import('./gateway.js').GatewayStartupError,
): number {
  if (err instanceof GatewayStartupError) {
    logger.fatal({ err: err.message }, 'cannot start');
    process.stderr.write(`agent_gateway: ${err.message}\n`);
    return err.exitCode;
  }
  logger.fatal({ err }, 'cannot start');
  process.stderr.write(`agent_gateway: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(
      `agent_gateway: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
