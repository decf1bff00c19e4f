// A receipt key that never leaves the TPM (issue #17 "Tests"; docs/contract.md "Receipts"): a real swtpm
// behind tpm2-abrmd, the key made through the PKCS#11 module (pkcs11/signer.ts, as the registry CLI makes
// its keys), `[receipts] signing_key = "pkcs11:token=…;object=…"`. The gateway signs its checkpoints in
// the TPM; `agent_gateway receipts-key` prints that key; receipts verify accepts the chain with it and
// refuses it with another key.
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import { startSwtpm, type TpmHandle } from '../../dev-support/swtpm.js';
import { ensureKey } from '../../pkcs11/signer.js';
import { type GatewayProcess, makeTempDir, startGatewayProcess } from '../support/gateway.js';
import {
  chainProblems,
  echoTunnels,
  publicKeyFromPem,
  readChain,
  receiptsKeyCommand,
  receiptsSection,
  sha256Hex,
  shown,
  verifyCommand,
  writeReceiptKey,
} from '../support/receipts.js';
import { startEchoServer, type Upstream } from '../support/upstreams.js';

const GATEWAY_ID = 'gw-pkcs11-e2e';
const TOKEN = 'agent-gateway';
const KEY_LABEL = 'receipts-signing';
const USER_PIN = 'receipts-user-pin';
const SO_PIN = 'receipts-so-pin';

describe('receipts signed by a PKCS#11 key in swtpm', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let dir: string;
  let tpm: TpmHandle;
  let spkiDer: Buffer;
  let echo: Upstream;
  let alpha: Carrier;
  let gw: GatewayProcess;
  let env: Record<string, string>;
  const receiptsPath = () => path.join(dir, 'receipts');

  beforeAll(async () => {
    [tpm, dbUrl] = await Promise.all([startSwtpm(), createMigratedDatabase(adminUrl, 'receipts_pkcs11')]);
    // The module reads its TCTI from the environment of the process that loads it.
    Object.assign(process.env, tpm.env);
    spkiDer = ensureKey({
      modulePath: tpm.env.TPM2_PKCS11_MODULE,
      store: tpm.env.TPM2_PKCS11_STORE,
      tokenLabel: TOKEN,
      keyLabel: KEY_LABEL,
      userPin: USER_PIN,
      soPin: SO_PIN,
    }).spkiDer;
    env = { ...tpm.env, AGENT_GATEWAY_TPM_USER_PIN: USER_PIN };
    echo = await startEchoServer();
    alpha = await createCarrier('agent-alpha');
    await grant(dbUrl, {
      principalId: 'org-alice',
      principal: createPrincipalKey(),
      identity: alpha.identity,
      subjectSpkiDer: alpha.spkiDer,
      destination: 'docstore:443',
    });
    dir = await makeTempDir('agw-receipts-pkcs11-');
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      env,
      config: {
        // A checkpoint every 5 receipts: the run below makes several TPM signatures.
        receipts: receiptsSection(receiptsPath(), `pkcs11:token=${TOKEN};object=${KEY_LABEL}`, GATEWAY_ID, {
          checkpoint_receipts: 5,
        }),
        upstream: { overrides: { 'docstore:443': `127.0.0.1:${echo.port}` } },
      },
    });
  });

  afterAll(async () => {
    await gw?.cleanup();
    await echo?.close();
    await tpm?.stop();
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('checkpoints are signed in the TPM; receipts verify with the key receipts-key prints exits 0', async () => {
    await echoTunnels(gw, alpha, 'docstore:443', 12);
    expect(await gw.stop()).toBe(0);

    const printed = await receiptsKeyCommand(gw.configPath, env);
    expect(printed.code, shown(printed)).toBe(0);
    const publicKey = publicKeyFromPem(printed.stdout);
    expect(publicKey.export({ type: 'spki', format: 'der' })).toEqual(spkiDer);
    const keyId = sha256Hex(spkiDer);
    expect(printed.stdout).toMatch(new RegExp(`^key_id: ${keyId}$`, 'm'));

    const chain = await readChain(receiptsPath(), GATEWAY_ID);
    expect(chainProblems(chain, GATEWAY_ID, publicKey, keyId)).toEqual([]);
    expect(chain.tunnels.length).toBe(12);
    expect(chain.checkpoints.filter((c) => c.cause === 'count').length).toBeGreaterThanOrEqual(2);
    expect(chain.checkpoints.at(-1)).toMatchObject({ cause: 'stop', key_id: keyId });

    const pem = path.join(dir, 'receipts-tpm.pub.pem');
    await writeFile(pem, printed.stdout.slice(0, printed.stdout.indexOf('-----END PUBLIC KEY-----') + 25));
    const ok = await verifyCommand(chain.files, pem, ['--registry', dbUrl]);
    expect(ok.code, shown(ok)).toBe(0);

    const other = await writeReceiptKey(dir, 'not-the-gateway');
    const wrong = await verifyCommand(chain.files, other.publicPath);
    expect(wrong.code, shown(wrong)).not.toBe(0);
  });
});
