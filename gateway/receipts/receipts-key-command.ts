/**
 * `agent_gateway receipts-key --config <file>`: prints the receipt public key (SPKI PEM) and its key_id,
 * what an auditor passes to `agent_gateway_registry receipts verify --gateway-key` (docs/contract.md
 * "Receipts"). Reads only the config's [receipts] section and the key: no database, no listener.
 * Exit 0; 2 for a bad command line or config; 1 when the key cannot be used.
 */
import { createPublicKey } from 'node:crypto';
import { Command, CommanderError } from 'commander';
import { ConfigError, loadConfigReceipts } from '../config.js';
import { openReceiptSigner, ReceiptKeyError } from './receipt-signer.js';

const EXIT_USAGE = 2;

export async function receiptsKey(args: readonly string[]): Promise<number> {
  const program = new Command()
    .name('agent_gateway receipts-key')
    .description('print the receipt public key (SPKI PEM) and its key_id')
    .requiredOption('--config <path>', 'gateway configuration (TOML)')
    .exitOverride();
  try {
    program.parse(args as string[], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT_USAGE;
    throw err;
  }
  const { config: file } = program.opts<{ config: string }>();
  let signingKey: string | undefined;
  try {
    signingKey = loadConfigReceipts(file).signingKey;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`agent_gateway: invalid configuration: ${err.message}\n`);
    return EXIT_USAGE;
  }
  if (signingKey === undefined) {
    process.stderr.write(`agent_gateway: ${file}: receipts.signing_key is not set\n`);
    return EXIT_USAGE;
  }
  try {
    const signer = await openReceiptSigner(signingKey);
    const pem = createPublicKey({ key: signer.spkiDer, format: 'der', type: 'spki' }).export({
      type: 'spki',
      format: 'pem',
    });
    signer.close();
    process.stdout.write(`${pem.toString().trimEnd()}\nkey_id: ${signer.keyId}\n`);
    return 0;
  } catch (err) {
    if (!(err instanceof ReceiptKeyError)) throw err;
    process.stderr.write(`agent_gateway: ${err.message}\n`);
    return 1;
  }
}
