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

  program
    .command('root-sign-pending')
    .description(
      'List the active principal key and scope rows without a valid signature by root ID, ask, and sign them ' +
        '(migrating a registry onto a root, or re-signing with a new root during a rotation).',
    )
    .requiredOption('--root-key <ID>', 'root key id (sha256:...) as init-root prints it')
    .option('--yes', 'sign without asking')
    .addHelpText('after', environmentHelp + ROOT_ENVIRONMENT_HELP)
    .action((o: { rootKey: string; yes?: boolean }) =>
      run(() => rootSignPending(ctx, { rootKeyId: parseRootKeyId(o.rootKey), yes: o.yes === true }))(),
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
