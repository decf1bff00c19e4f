// The registry CLI as admins run it (registry-cli-*.test.ts): `node dist/registry-cli/cli.js …` (and the
// registry-cli/*.sh wrappers) as subprocesses, against a real swtpm through real tpm2-pkcs11 and a real
// PostgreSQL, with the agents' keys as admins have them. The file's state is exported as live bindings
// (db, tpm, env, …): registryCliSuite() sets them in its beforeAll. Needs `npm run build` first.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, expect, inject } from 'vitest';
import { createCarrierCertificate } from '../../core/carrier-cert.js';
import { spkiToPem } from '../../core/spki-input.js';
import { createDatabase, createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { type CommandResult, runCommand } from '../../dev-support/run-command.js';
import { startSwtpm, type TpmHandle } from '../../dev-support/swtpm.js';

const CLI = path.join(repoRoot, 'dist', 'registry-cli', 'cli.js');
export const USER_PIN = 'alice-user-pin';
const SO_PIN = 'alice-so-pin';
export const TOKEN = 'agent-gateway';

export let databaseUrl: string;
export let tpm: TpmHandle;
export let db: pg.Client;
export let work: string;
export let env: NodeJS.ProcessEnv;

// The agent's key as the admin has it: a PEM public key file, and a carrier-style certificate.
const agent = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
export const agentSpki = agent.publicKey.export({ type: 'spki', format: 'der' });
export let agentPem: string;
export let betaCertPem: string;
export let betaSpki: Buffer;

function cli(args: string[], extraEnv: Record<string, string | undefined> = {}): Promise<CommandResult> {
  const merged: NodeJS.ProcessEnv = { ...env };
  for (const [k, v] of Object.entries(extraEnv)) {
    if (v === undefined) delete merged[k];
    else merged[k] = v;
  }
  return runCommand(process.execPath, [CLI, ...args], { env: merged, timeoutMs: 60_000 });
}

/** Run and insist on an exit code, showing the output when it differs. */
export async function expectExit(
  code: number,
  args: string[],
  extraEnv?: Record<string, string | undefined>,
) {
  const r = await cli(args, extraEnv);
  expect(r.code, `${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(code);
  return r;
}

/** Every row of the registry, every column, as text: equal snapshots mean nothing changed. */
export async function snapshot(): Promise<string> {
  const tables = ['principal_signing_keys', 'principal_key_permissions', 'permission_registry'];
  const parts: string[] = [];
  for (const t of tables) {
    const r = await db.query<{ row: string }>(`SELECT t::text AS row FROM ${t} t ORDER BY 1`);
    parts.push(`${t}:${r.rows.map((x) => x.row).join('|')}`);
  }
  return parts.join('\n');
}

export const ts = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

export async function scopeRows(keyId: string, destination: string) {
  const r = await db.query<{ id: string; nb: string; na: string; revoked: string | null }>(
    `SELECT id::text, ${ts('not_before')} AS nb, ${ts('not_after')} AS na, ${ts('revoked_at')} AS revoked
     FROM principal_key_permissions WHERE signing_key_id = $1 AND destination = $2 ORDER BY id`,
    [keyId, destination],
  );
  return r.rows;
}

/** Token labels in the store, and the labels of the private keys in `token` (when it exists). */
export function tokenContents(token = TOKEN): { tokens: string[]; keys: string[] } {
  Object.assign(process.env, tpm.env);
  if (!existsSync(tpm.env.TPM2_PKCS11_STORE)) return { tokens: [], keys: [] };
  const lib = new pkcs11js.PKCS11();
  lib.load(tpm.env.TPM2_PKCS11_MODULE);
  lib.C_Initialize();
  try {
    const slots = lib
      .C_GetSlotList(true)
      .filter((s) => (lib.C_GetTokenInfo(s).flags & pkcs11js.CKF_TOKEN_INITIALIZED) !== 0);
    const tokens = slots.map((s) => lib.C_GetTokenInfo(s).label.trim());
    const slot = slots.find((s) => lib.C_GetTokenInfo(s).label.trim() === token);
    if (slot === undefined) return { tokens, keys: [] };
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    try {
      lib.C_Login(session, pkcs11js.CKU_USER, USER_PIN);
      lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
      const handles = lib.C_FindObjects(session, 100);
      lib.C_FindObjectsFinal(session);
      const keys = handles.map((h) =>
        lib.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_LABEL }])[0]!.value.toString('utf8'),
      );
      return { tokens, keys: keys.sort() };
    } finally {
      lib.C_CloseSession(session);
    }
  } finally {
    lib.C_Finalize();
    lib.close();
  }
}

/** The TPM's dictionary-attack failure counter (TPM2_PT_LOCKOUT_COUNTER). */
export async function lockoutCounter(): Promise<number> {
  const r = await runCommand('tpm2_getcap', ['properties-variable'], {
    env: { ...process.env, ...tpm.env },
    check: true,
  });
  const m = /TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+|\d+)/.exec(r.stdout);
  if (m === null) throw new Error(`no TPM2_PT_LOCKOUT_COUNTER in: ${r.stdout}`);
  return Number(m[1]);
}

/**
 * Call once at the top of a test file: a fresh swtpm (no token yet) and a database of its own, migrated or
 * (for the tests of `migrate` itself) empty, and the agents' key files.
 */
export function registryCliSuite(dbName: string, opts: { readonly migrated: boolean }): void {
  const adminUrl = inject('pgAdminUrl');

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` before these tests`);
    work = mkdtempSync(path.join(os.tmpdir(), 'agw-cli-e2e-'));
    [tpm, databaseUrl] = await Promise.all([
      startSwtpm(),
      (opts.migrated ? createMigratedDatabase : createDatabase)(adminUrl, dbName),
    ]);
    db = new pg.Client({ connectionString: databaseUrl });
    await db.connect();
    env = {
      ...process.env,
      ...tpm.env,
      AGENT_GATEWAY_DATABASE_URL: databaseUrl,
      AGENT_GATEWAY_TPM_USER_PIN: USER_PIN,
      AGENT_GATEWAY_TPM_SO_PIN: SO_PIN,
    };
    delete env['AGENT_GATEWAY_TPM_TOKEN_LABEL'];
    agentPem = path.join(work, 'agent-alpha.pub.pem');
    writeFileSync(agentPem, spkiToPem(agentSpki));

    // agent-beta's key as a carrier certificate, the file an agent's operator actually has.
    betaSpki = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({
      type: 'spki',
      format: 'der',
    });
    const cert = await createCarrierCertificate({ subjectSpkiDer: betaSpki, identity: 'agent-beta' });
    betaCertPem = path.join(work, 'agent-beta.crt');
    writeFileSync(betaCertPem, cert.pem);
  });

  afterAll(async () => {
    await db?.end().catch(() => {});
    await tpm?.stop();
    if (databaseUrl) await dropDatabase(adminUrl, databaseUrl).catch(() => {});
    if (work) rmSync(work, { recursive: true, force: true });
  });
}

/**
 * The registry the refusal and revocation tests start from: org-alice registered and delegated docstore and
 * messaging:8443 for 60 days; agent-alpha granted docstore (alphaPermission); agent-beta's perm-beta-1,
 * renewed once (betaPermission, the active row).
 */
export async function seedGrants(): Promise<{ alphaPermission: string; betaPermission: string }> {
  const signed = async (args: string[]) => {
    const r = await expectExit(0, ['agent-permissions', 'grant', 'org-alice', ...args, '--json']);
    return (JSON.parse(r.stdout) as { permission_id: string }).permission_id;
  };
  await expectExit(0, ['register-principal-key', 'org-alice']);
  await expectExit(0, [
    'grant-principal-scope',
    'org-alice',
    'docstore',
    'messaging:8443',
    '--valid-days',
    '60',
  ]);
  const alphaPermission = await signed(['agent-alpha', agentPem, 'docstore', '10']);
  await signed(['agent-beta', betaCertPem, 'messaging:8443', '5', 'perm-beta-1']);
  const betaPermission = await signed([
    'agent-beta',
    betaSpki.toString('hex'),
    'messaging:8443',
    '7',
    'perm-beta-1',
  ]);
  return { alphaPermission, betaPermission };
}
