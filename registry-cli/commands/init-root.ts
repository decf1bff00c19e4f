/**
 * init-root [LABEL]: create (or find again) the P-256 root key labelled LABEL in a PKCS#11 token and print
 * its id and the line for the gateway's config (docs/contract.md "Root of trust"). With a database
 * configured, also record the public key in registry_root_keys, for display: the gateway trusts only its
 * config. README: in production the root lives on a hardware token kept offline.
 */
import { writeFileSync } from 'node:fs';
import { errorText } from '../../core/error-text.js';
import { rootKeyId } from '../../core/root-signed-bytes.js';
import { spkiToPem } from '../../core/spki-input.js';
import { ensureKey } from '../../pkcs11/signer.js';
import { checkKeyId } from '../args.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode, Refusal, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { keyIdBySpki, lockSigningKey } from '../registry-writes.js';
import { rootSignerOptions } from '../root-key.js';
import { assertRootSchema, recordRootKey } from '../root-writes.js';

export type InitRootOptions = {
  readonly label: string;
  readonly description?: string | undefined;
  readonly publicKeyOut?: string | undefined;
};

export async function initRoot(ctx: CommandContext, opts: InitRootOptions): Promise<ExitCode> {
  const label = checkKeyId(opts.label);
  const signerOptions = rootSignerOptions(ctx.env, label);
  const hasDatabase = Boolean(ctx.env['AGENT_GATEWAY_DATABASE_URL'] || ctx.env['DATABASE_URL']);

  const create = () => ensureKey(signerOptions);
  let made: ReturnType<typeof ensureKey>;
  let recorded: boolean | undefined;
  if (hasDatabase) {
    const target = databaseFromEnv(ctx.env);
    ({ made, recorded } = await withRegistry(target, (registry) =>
      registry.transaction(async (db) => {
        await assertRootSchema(db);
        // A root must never double as a principal key: its signatures would then vouch for itself.
        if ((await lockSigningKey(db, label, 'share')) !== undefined) {
          throw new Refusal(
            `${label} is a registered principal key id; a root key needs a label of its own (nothing was created)`,
          );
        }
        const made = create();
        const holder = await keyIdBySpki(db, made.spkiDer);
        if (holder !== undefined) {
          throw new Refusal(
            `the key labelled ${label} is registered as principal key ${holder}; it cannot be a root`,
          );
        }
        const id = rootKeyId(made.spkiDer);
        const recorded = await recordRootKey(db, id, made.spkiDer, opts.description ?? null);
        return { made, recorded };
      }),
    ));
  } else {
    made = create();
  }

  const id = rootKeyId(made.spkiDer);
  if (opts.publicKeyOut !== undefined) {
    try {
      writeFileSync(opts.publicKeyOut, spkiToPem(made.spkiDer));
    } catch (err) {
      throw new UsageError(`cannot write ${opts.publicKeyOut}: ${errorText(err)}`);
    }
  }
  const what = [made.created.token && 'token', made.created.key && 'key'].filter(Boolean).join(' and ');
  ctx.io.out(
    `root key ${label}: ${what === '' ? 'existing TPM key' : `created TPM ${what}`} in token "${signerOptions.tokenLabel}"`,
  );
  ctx.io.out(`root_key_id: ${id}`);
  ctx.io.out('gateway config, [policy] section (or trust_root_files with --public-key-out):');
  ctx.io.out(`trust_roots = ["${made.spkiDer.toString('base64')}"]`);
  if (!ctx.env['AGENT_GATEWAY_ROOT_TOKEN_LABEL']) {
    // Whoever can use the principals' token (its PIN is on every admin's machine) could then sign as the
    // root, and the root of trust would be no stronger than that PIN.
    ctx.io.err(
      `warning: the root key is in the principals' token "${signerOptions.tokenLabel}" ` +
        '(AGENT_GATEWAY_ROOT_TOKEN_LABEL is unset): anyone with that token and its PIN can sign as the root; ' +
        'for production create it in a token of its own, kept offline',
    );
  }
  if (recorded === undefined) {
    ctx.io.err(
      'note: no database configured (AGENT_GATEWAY_DATABASE_URL): not recorded in registry_root_keys',
    );
  } else {
    ctx.io.out(recorded ? 'recorded in registry_root_keys' : 'already recorded in registry_root_keys');
  }
  return EXIT_OK;
}
