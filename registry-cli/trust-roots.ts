/**
 * The trust roots `agent-permissions check` judges with: --trust-root (base64 SPKI DER, as in the
 * gateway's policy.trust_roots), --trust-root-file (PEM PUBLIC KEY, as in policy.trust_root_files) and
 * --config (the gateway's config file: only its policy.trust_roots and policy.trust_root_files, read by
 * the gateway's own loader, so the admin's environment need not hold the gateway's database URL).
 * Parsed by the gateway's code (gateway/trust-roots.ts, gateway/config.ts), so check accepts exactly
 * what the gateway accepts; a bad entry is a usage error naming it.
 */
import { errorText } from '../core/error-text.js';
import type { TrustRoots } from '../core/policy.js';
import { loadConfigTrustRoots } from '../gateway/config.js';
import { trustRootFromBase64, trustRootFromFile } from '../gateway/trust-roots.js';
import { UsageError } from './errors.js';

export type TrustRootArgs = {
  readonly trustRoot: readonly string[];
  readonly trustRootFile: readonly string[];
  readonly config?: string | undefined;
};

/** The roots by id; an empty map when none is given (check then judges as a gateway without roots). */
export function loadTrustRoots(args: TrustRootArgs): TrustRoots {
  const roots = new Map<string, Buffer>();
  const add = (what: string, parse: () => [string, Buffer]) => {
    try {
      roots.set(...parse());
    } catch (err) {
      // A file that cannot be read is not a bad key: say which of the two it is.
      const unreadable = err instanceof Error && 'syscall' in err;
      throw new UsageError(
        unreadable
          ? `${what}: cannot read: ${errorText(err)}`
          : `${what} is not a P-256 public key: ${errorText(err)}`,
        { cause: err },
      );
    }
  };
  for (const [i, b64] of args.trustRoot.entries())
    add(`--trust-root #${i + 1}`, () => trustRootFromBase64(b64));
  for (const name of args.trustRootFile) add(`--trust-root-file ${name}`, () => trustRootFromFile(name));
  if (args.config !== undefined) {
    let configured: TrustRoots;
    try {
      configured = loadConfigTrustRoots(args.config);
    } catch (err) {
      throw new UsageError(`--config ${args.config}: ${errorText(err)}`, { cause: err });
    }
    for (const [id, spki] of configured) roots.set(id, spki);
  }
  return roots;
}
