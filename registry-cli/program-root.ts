/**
 * The root-of-trust commands of the registry CLI (docs/contract.md "Root of trust"): init-root,
 * root-sign-pending, root-withdraw. Commander wiring only, like program.ts.
 */
import type { Command } from 'commander';
import { initRoot } from './commands/init-root.js';
import { rootSignPending } from './commands/root-sign-pending.js';
import { rootWithdraw } from './commands/root-withdraw.js';
import type { ExitCode } from './errors.js';
import type { CommandContext } from './io.js';
import { DEFAULT_ROOT_LABEL, parseRootKeyId } from './root-key.js';
import { loadTrustRoots, type TrustRootArgs } from './trust-roots.js';

const collect = (value: string, previous: string[]) => [...previous, value];

/** --trust-root, --trust-root-file and --config, read by loadTrustRoots: `check` and root-sign-pending. */
export function withTrustRootOptions(command: Command, what: string): Command {
  return command
    .option('--trust-root <BASE64>', `${what}: a root as in policy.trust_roots (repeatable)`, collect, [])
    .option(
      '--trust-root-file <PEM>',
      `${what}: a root PEM file as in policy.trust_root_files (repeatable)`,
      collect,
      [],
    )
    .option('--config <FILE>', `${what}: the roots of the gateway's config file ([policy] trust roots)`);
}

export const ROOT_ENVIRONMENT_HELP = `
Root key token (default: the principals' token above):
  AGENT_GATEWAY_ROOT_TOKEN_LABEL  token that holds the root key (for production: a hardware token kept offline)
  AGENT_GATEWAY_ROOT_USER_PIN     its user PIN`;

export function addRootCommands(
  program: Command,
  ctx: CommandContext,
  run: (fn: () => Promise<ExitCode>) => () => Promise<void>,
  environmentHelp: string,
): void {
  program
    .command('init-root')
    .description(
      'Create (or find again) the P-256 root key LABEL in the PKCS#11 token and print its root_key_id and the ' +
        'trust_roots line for the gateway config; with a database configured, record its public key in ' +
        'registry_root_keys (display only: the gateway trusts only its config).',
    )
    .argument('[LABEL]', 'key label in the token', DEFAULT_ROOT_LABEL)
    .option('--description <TEXT>', 'description stored in registry_root_keys')
    .option('--public-key-out <file>', 'also write the public key (PEM) for policy.trust_root_files')
    .addHelpText('after', environmentHelp + ROOT_ENVIRONMENT_HELP)
    .action((label: string, o: { description?: string; publicKeyOut?: string }) =>
      run(() => initRoot(ctx, { label, description: o.description, publicKeyOut: o.publicKeyOut }))(),
    );

  withTrustRootOptions(
    program
      .command('root-sign-pending')
      .description(
        'List the active principal key and scope rows without a valid signature by root ID, ask, and sign ' +
          'them: rows whose signature verifies under a root you name (a rotation), and with --sign-unvouched ' +
          'the others too (migrating a registry onto its first root, after checking each public key).',
      )
      .requiredOption('--root-key <ID>', 'root key id (sha256:...) as init-root prints it'),
    'vouch for the rows this root signed',
  )
    .option('--sign-unvouched', 'also sign rows no named root signed (check the listed public keys first)')
    .option('--yes', 'sign without asking')
    .addHelpText('after', environmentHelp + ROOT_ENVIRONMENT_HELP)
    .action((o: TrustRootArgs & { rootKey: string; signUnvouched?: boolean; yes?: boolean }) =>
      run(() =>
        rootSignPending(ctx, {
          rootKeyId: parseRootKeyId(o.rootKey),
          vouchingRoots: loadTrustRoots(o),
          signUnvouched: o.signUnvouched === true,
          yes: o.yes === true,
        }),
      )(),
    );

  program
    .command('root-withdraw')
    .description(
      "Clear a principal key's or a scope's root signature: with trust roots the gateway then denies what it " +
        'authorized, and re-checks live tunnels.',
    )
    .option('--key <KEY_ID>', 'principal key id')
    .option('--scope <SCOPE_ID>', 'scope row id (root-sign-pending lists them)')
    .addHelpText('after', environmentHelp)
    .action((o: { key?: string; scope?: string }) =>
      run(() => rootWithdraw(ctx, { keyId: o.key, scopeId: o.scope }))(),
    );
}
