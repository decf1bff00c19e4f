/**
 * The registry CLI's command line: commander wiring only, the work is in commands/. Exit codes:
 * 0 done or allowed, 1 refused or denied (registry unchanged), 2 usage or environment error (a malformed
 * argument such as an invalid destination is a usage error in every command).
 */
import { Command, CommanderError } from 'commander';
import { parseLimit, parseValidDays } from './args.js';
import { checkPermission } from './commands/agent-permissions-check.js';
import { deletePermissions } from './commands/agent-permissions-delete.js';
import { grantPermission } from './commands/agent-permissions-grant.js';
import { listAgentPermissions } from './commands/agent-permissions-list.js';
import { grantPrincipalScope } from './commands/grant-principal-scope.js';
import { migrateRegistry } from './commands/migrate.js';
import { registerPrincipalKey } from './commands/register-principal-key.js';
import type { Env } from './env.js';
import { EXIT_ENVIRONMENT, EXIT_OK, type ExitCode, toCliError } from './errors.js';
import type { Io } from './io.js';
import { addReceiptCommands } from './program-receipts.js';
import { addRequestCommands } from './program-requests.js';
import { addRootCommands, ROOT_ENVIRONMENT_HELP, withTrustRootOptions } from './program-root.js';
import { parseRootKeyId } from './root-key.js';
import { loadTrustRoots } from './trust-roots.js';

const ENVIRONMENT_HELP = `
Environment:
  AGENT_GATEWAY_DATABASE_URL (or DATABASE_URL)  postgresql:// URL of the registry
  TPM2_PKCS11_STORE              tpm2-pkcs11 store directory (belongs with the TPM's state)
  TPM2_PKCS11_TCTI               how tpm2-pkcs11 reaches the TPM (e.g. device:/dev/tpmrm0, tabrmd:bus_type=session)
  TPM2_PKCS11_MODULE             PKCS#11 module (default /usr/lib/<arch>-linux-gnu/pkcs11/libtpm2_pkcs11.so)
  AGENT_GATEWAY_TPM_TOKEN_LABEL  token label (default agent-gateway)
  AGENT_GATEWAY_TPM_USER_PIN     token user PIN (to create keys and sign)
  AGENT_GATEWAY_TPM_SO_PIN       token SO PIN (only to create the token)
  TSS2_LOG=all+error             show the TSS libraries' diagnostics (off by default; tpm2-pkcs11's own
                                 "ERROR: ..." lines, e.g. on a wrong PIN, are always printed)

Exit status: 0 done/allowed, 1 refused/denied (registry unchanged), 2 usage or environment error.
  Usage errors (2) are malformed arguments, the same in every command: an invalid destination, a
  KEY_ID with whitespace or control characters, an identity or id with a control character, an
  unreadable SPKI, a bad number. A well-formed request the gateway would not honour (a destination
  outside the signer's scope, a revoked or expired signer, a key that is not P-256) is refused (1).`;

export function buildProgram(env: Env, io: Io, setExit: (code: ExitCode) => void): Command {
  const ctx = { env, io };
  const run = (fn: () => Promise<ExitCode>) => async () => setExit(await fn());

  const program = new Command('agent_gateway_registry')
    .description('Manage the agent_gateway authorization registry (principal keys in a TPM, signed grants).')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .showHelpAfterError('(add --help for usage)')
    .addHelpText('after', ENVIRONMENT_HELP);

  program
    .command('register-principal-key')
    .description(
      'Create (or reuse) a non-exportable P-256 key labelled KEY_ID in the TPM token, creating the token if ' +
        'missing, and register its public key as principal KEY_ID. While KEY_ID is registered, nothing is ' +
        'created in the TPM unless --replace.',
    )
    .argument(
      '<KEY_ID>',
      'principal key id, also the key label in the token (no whitespace or control characters)',
    )
    .argument(
      '[VALID_DAYS]',
      'validity from now; a refresh only extends: not_after = greatest(current, now + VALID_DAYS)',
      '365',
    )
    .option(
      '--replace',
      'register the TPM key (creating it if missing) even if KEY_ID is registered with a different public key; ' +
        "revokes the old key's scopes",
    )
    .option('--public-key-out <file>', 'also write the public key (PEM SubjectPublicKeyInfo) to <file>')
    .option('--root-key <ROOT_KEY_ID>', 'sign the registration with this root key (init-root prints its id)')
    .addHelpText('after', ENVIRONMENT_HELP + ROOT_ENVIRONMENT_HELP)
    .action(
      (keyId: string, days: string, o: { replace?: boolean; publicKeyOut?: string; rootKey?: string }) =>
        run(() =>
          registerPrincipalKey(ctx, {
            keyId,
            validDays: parseValidDays(days),
            replace: o.replace === true,
            publicKeyOut: o.publicKeyOut,
            rootKeyId: o.rootKey === undefined ? undefined : parseRootKeyId(o.rootKey),
          }),
        )(),
    );

  program
    .command('grant-principal-scope')
    .description(
      'Delegate destinations to principal KEY_ID. A refresh only widens a scope: its start never moves later, ' +
        'so permissions it already covers stay valid.',
    )
    .argument('<KEY_ID>', 'registered principal key id')
    .argument('<DEST...>', 'destinations, host[:port] or [v6][:port] (port defaults to 443)')
    .option('--valid-days <N>', 'validity from now (default 365; with --root-key, until the key expires)')
    .option(
      '--root-key <ROOT_KEY_ID>',
      "sign each scope row with this root key; refused when the scope would outlast the key's window",
    )
    .addHelpText('after', ENVIRONMENT_HELP + ROOT_ENVIRONMENT_HELP)
    .action((keyId: string, destinations: string[], o: { validDays?: string; rootKey?: string }) =>
      run(() =>
        grantPrincipalScope(ctx, {
          keyId,
          destinations,
          validDays: o.validDays === undefined ? undefined : parseValidDays(o.validDays, '--valid-days'),
          rootKeyId: o.rootKey === undefined ? undefined : parseRootKeyId(o.rootKey),
        }),
      )(),
    );

  const permissions = program
    .command('agent-permissions')
    .description(
      'Grant, revoke, list and check the signed permissions of agents; list, approve and dismiss access requests.',
    );

  permissions
    .command('grant')
    .description(
      'Sign a permission for SUBJECT_IDENTITY with public key SPKI to reach DEST with the TPM key of KEY_ID, ' +
        "and write it; refused unless the gateway's policy would honour it.",
    )
    .argument('<KEY_ID>', 'principal key that signs')
    .argument('<SUBJECT_IDENTITY>', 'agent identity (its certificate identity extension)')
    .argument('<SPKI>', 'agent public key: PEM/DER public key or certificate file, or hex of the DER')
    .argument('<DEST>', 'destination, host[:port] or [v6][:port] (port defaults to 443)')
    .argument('[VALID_DAYS]', 'validity from now', '30')
    .argument(
      '[PERMISSION_ID]',
      'id of the row (default perm-<uuid>, a new row: other active rows for the same identity, key and ' +
        'destination stay in force, a note names them); an active id is renewed: a new signed row under a ' +
        'new id replaces it, and it is revoked',
    )
    .option('--json', 'print the written row as JSON')
    .addHelpText('after', ENVIRONMENT_HELP)
    .action(
      (
        keyId: string,
        subjectIdentity: string,
        spki: string,
        destination: string,
        days: string,
        permissionId: string | undefined,
        o: { json?: boolean },
      ) =>
        run(() =>
          grantPermission(ctx, {
            keyId,
            subjectIdentity,
            spki,
            destination,
            validDays: parseValidDays(days),
            permissionId,
            json: o.json === true,
          }),
        )(),
    );

  permissions
    .command('delete')
    .description('Revoke (revoked_at = now, never DELETE) the active permissions of an agent key.')
    .argument('<SUBJECT_IDENTITY>', 'agent identity')
    .argument('<SPKI>', 'agent public key: PEM/DER public key or certificate file, or hex of the DER')
    .option('--destination <DEST>', 'revoke only the permissions for this destination')
    .option(
      '--expect-some',
      'exit 1 when nothing was revoked (by default revoking nothing exits 0: the rows were already revoked, ' +
        'or none exist, which a note points out)',
    )
    .option('--json', 'print the revoked rows as JSON')
    .addHelpText('after', ENVIRONMENT_HELP)
    .action(
      (
        subjectIdentity: string,
        spki: string,
        o: { destination?: string; expectSome?: boolean; json?: boolean },
      ) =>
        run(() =>
          deletePermissions(ctx, {
            subjectIdentity,
            spki,
            destination: o.destination,
            expectSome: o.expectSome === true,
            json: o.json === true,
          }),
        )(),
    );

  permissions
    .command('list')
    .description('List permission rows with their state (active, revoked, expired, not_yet_valid).')
    .option('--identity <ID>', 'only this agent identity')
    .option('--limit <N>', 'at most N rows', '1000')
    .option('--json', 'print JSON')
    .addHelpText('after', ENVIRONMENT_HELP)
    .action((o: { identity?: string; limit: string; json?: boolean }) =>
      run(() =>
        listAgentPermissions(ctx, {
          identity: o.identity,
          limit: parseLimit(o.limit),
          json: o.json === true,
        }),
      )(),
    );

  withTrustRootOptions(
    permissions
      .command('check')
      .description(
        "Say whether the gateway would allow SUBJECT_IDENTITY with key SPKI to reach DEST now, using the gateway's " +
          'own policy code, and why, row by row. Exit 0 allow, 1 deny, 2 for an invalid DEST.',
      )
      .argument('<SUBJECT_IDENTITY>', 'agent identity')
      .argument('<SPKI>', 'agent public key: PEM/DER public key or certificate file, or hex of the DER')
      .argument('<DEST>', 'destination as the agent would send it')
      .option('--json', 'print JSON'),
    'judge with this root',
  )
    .addHelpText('after', ENVIRONMENT_HELP)
    .action(
      (
        subjectIdentity: string,
        spki: string,
        destination: string,
        o: { json?: boolean; trustRoot: string[]; trustRootFile: string[]; config?: string },
      ) =>
        run(async () =>
          checkPermission(ctx, {
            subjectIdentity,
            spki,
            destination,
            json: o.json === true,
            roots: loadTrustRoots(o),
          }),
        )(),
    );

  addRequestCommands(permissions, ctx, run, ENVIRONMENT_HELP);
  addRootCommands(program, ctx, run, ENVIRONMENT_HELP);
  addReceiptCommands(program, ctx, run, ENVIRONMENT_HELP);

  program
    .command('migrate')
    .description('Apply the registry migrations that are missing; prints what it applied or "up to date".')
    .addHelpText('after', ENVIRONMENT_HELP)
    .action(() => run(() => migrateRegistry(ctx))());

  return program;
}

/** Parse argv (node-style: [node, script, ...args]), run, and return the exit code. Never throws. */
export async function runCli(argv: readonly string[], env: Env, io: Io): Promise<ExitCode> {
  let code: ExitCode = EXIT_OK;
  const program = buildProgram(env, io, (c) => {
    code = c;
  });
  try {
    await program.parseAsync([...argv]);
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; every parse error is a usage error.
      return err.exitCode === 0 ? EXIT_OK : EXIT_ENVIRONMENT;
    }
    const cli = toCliError(err);
    io.err(`${cli.exitCode === 1 ? 'refused' : 'error'}: ${cli.message}`);
    return cli.exitCode;
  }
}
