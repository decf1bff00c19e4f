/**
 * The `[receipts]` section of the gateway config (docs/contract.md "Receipts", "Configuration"): typed
 * and checked here, read by gateway/config.ts like every other section. The section absent or
 * `enabled = false` means no receipts at all, exactly as before receipts existed.
 */
import { hostname } from 'node:os';
import { GATEWAY_ID } from '../../core/receipt-fields.js';
import type { ConfigReader } from '../config-reader.js';

export type ReceiptsOnFailure = 'deny' | 'continue';

export type ReceiptsConfig = {
  readonly enabled: boolean;
  /** Directory; each gateway id writes under `<path>/<gateway id>/`. */
  readonly path: string;
  /** The chain's gateway id before any `-w<index>` suffix (^[A-Za-z0-9._-]{1,64}$). */
  readonly instanceId: string;
  /** A PEM PKCS#8 EC P-256 private key file, or `pkcs11:token=<label>;object=<key label>`. */
  readonly signingKey: string | undefined;
  /** Also write a receipt for every denied CONNECT. */
  readonly includeDenied: boolean;
  /** While receipts cannot be written: refuse new CONNECTs (deny) or keep allowing (continue). */
  readonly onFailure: ReceiptsOnFailure;
  /** A signed checkpoint after this many unsigned records... */
  readonly checkpointReceipts: number;
  /** ...or this long after the first unsigned one, whichever comes first. */
  readonly checkpointIntervalMs: number;
  /** Written bytes reach the disk (fsync) at most this long after they were written; 0 = every write. */
  readonly fsyncIntervalMs: number;
  readonly rotateBytes: number;
  readonly rotateIntervalS: number;
  /** Records waiting in memory beyond which new ones are dropped (and counted, then named by a gap). */
  readonly maxQueued: number;
};

/**
 * Reads every key unconditionally (CONFIG_KEYS is what the reads record), then checks the values that
 * only matter when receipts are on. `instanceIdUsed` false (receipts-key, which names no chain): the
 * instance id, often the host name, is not checked.
 */
export function readReceiptsConfig(r: ConfigReader, instanceIdUsed = true): ReceiptsConfig {
  const config: ReceiptsConfig = {
    enabled: r.bool('enabled', false),
    path: r.optionalString('path') ?? '/var/lib/agent-gateway/receipts',
    instanceId: r.optionalString('instance_id') ?? hostname(),
    signingKey: r.optionalString('signing_key'),
    includeDenied: r.bool('include_denied', false),
    onFailure: r.choice('on_failure', ['deny', 'continue'] as const, 'deny'),
    checkpointReceipts: r.int('checkpoint_receipts', 1000, 1, 1_000_000),
    checkpointIntervalMs: r.int('checkpoint_interval_ms', 1000, 10, 3_600_000),
    fsyncIntervalMs: r.int('fsync_interval_ms', 1000, 0, 60_000),
    rotateBytes: r.int('rotate_bytes', 64 * 1024 * 1024, 4096, 2 ** 40),
    rotateIntervalS: r.int('rotate_interval_s', 86_400, 1, 2_000_000),
    maxQueued: r.int('max_queued', 100_000, 1, 10_000_000),
  };
  if (!config.enabled) return config;
  if (config.signingKey === undefined) {
    r.fail('signing_key', 'must be set when receipts.enabled is true (a PEM key file or a pkcs11: URI)');
  }
  if (instanceIdUsed && !GATEWAY_ID.test(config.instanceId)) {
    r.fail(
      'instance_id',
      `${JSON.stringify(config.instanceId)} must be 1..64 of A-Z a-z 0-9 . _ - (set it when the host name is not)`,
    );
  }
  return config;
}
