/**
 * The trust roots a running gateway uses, and their SIGHUP reload (docs/contract.md "Root of trust"):
 * the config file is read again; a file that does not load keeps the old roots and logs an error; other
 * roots are handed to `apply` (new decisions use them and every open tunnel is re-checked). The root ids
 * in force are logged at startup and after each reload.
 */
import { errorText } from '../core/error-text.js';
import type { TrustRoots } from '../core/policy.js';
import { type GatewayConfig, loadConfig } from './config.js';
import type { Logger } from './telemetry.js';
import { sameTrustRoots, trustRootIds } from './trust-roots.js';

/** First schema version with root_key_id / root_signature (migrations/0006). */
export const ROOT_SCHEMA_VERSION = 6;

export class TrustRootsInForce {
  private roots: TrustRoots;

  constructor(
    private readonly config: GatewayConfig,
    private readonly logger: Pick<Logger, 'info' | 'warn' | 'error'>,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.roots = config.policy.trustRoots;
    this.log('trust roots in force');
  }

  get current(): TrustRoots {
    return this.roots;
  }

  /** Re-read the config file; true when it loaded (changed or not). */
  reload(apply: (roots: TrustRoots) => void): boolean {
    let next: TrustRoots;
    try {
      next = loadConfig(this.config.path, this.env).policy.trustRoots;
    } catch (err) {
      this.logger.error(
        { err: errorText(err), trust_root_ids: trustRootIds(this.roots) },
        'SIGHUP: config does not load; keeping the trust roots in force',
      );
      return false;
    }
    if (sameTrustRoots(this.roots, next)) {
      this.log('SIGHUP: trust roots unchanged');
      return true;
    }
    const hadRoots = this.roots.size > 0;
    this.roots = next;
    apply(next);
    if (hadRoots && next.size === 0) {
      // From here on the database alone grants again: an operator must never learn that from silence.
      this.logger.warn(
        { trust_root_ids: [], trust_roots_enabled: false },
        'SIGHUP: trust roots removed; the registry is trusted as stored again (anyone who can write it can grant)',
      );
      return true;
    }
    this.log('SIGHUP: trust roots changed; re-checking every open tunnel');
    return true;
  }

  private log(msg: string): void {
    const ids = trustRootIds(this.roots);
    this.logger.info({ trust_root_ids: ids, trust_roots_enabled: ids.length > 0 }, msg);
  }
}
