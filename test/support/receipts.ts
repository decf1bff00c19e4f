// Tunnel receipts end to end (receipts-*.test.ts; docs/contract.md "Receipts"): a receipt key on disk, the
// gateway's `[receipts]` section, the chain read back from `<path>/<gateway id>/receipts-*.jsonl`, an
// independent check of that chain (seq, prev, checkpoint signatures) that does not use the verifier
// under test, and the two commands an auditor runs: `agent_gateway receipts-key` and
// `agent_gateway_registry receipts verify`. Needs `npm run build` (dist/gateway, dist/registry-cli).
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { p256PublicKey, verifyDerSignature } from '../../core/ecdsa.js';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import {
  type CheckpointReceipt,
  checkpointSignedBytes,
  decodeReceipt,
  encodeReceipt,
  type GapReceipt,
  GENESIS_PREV,
  type Receipt,
  receiptHash,
  type TunnelReceipt,
} from '../../core/receipt-format.js';
import { parseTimestamp } from '../../core/timestamp.js';
import type { Carrier } from '../../dev-support/pki.js';
import { withClient } from '../../dev-support/registry-seed.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { type CommandResult, runCommand } from '../../dev-support/run-command.js';
import {
  closed,
  closeSession,
  connectH2,
  GATEWAY_MAIN,
  type GatewayProcess,
  openTunnel,
  roundTrip,
} from './gateway.js';

export const REGISTRY_CLI = path.join(repoRoot, 'dist', 'registry-cli', 'cli.js');
export const TIMESTAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

export type ReceiptKey = {
  /** PEM PKCS#8 private key: `[receipts] signing_key`. */
  readonly keyPath: string;
  /** SPKI PEM public key: `receipts verify --gateway-key`. */
  readonly publicPath: string;
  readonly publicKey: KeyObject;
  /** Lowercase hex SHA-256 of the SPKI DER, the checkpoints' key_id. */
  readonly keyId: string;
};

/** A fresh P-256 receipt key written to `dir` (name.key, name.pub.pem). */
export async function writeReceiptKey(dir: string, name = 'receipts'): Promise<ReceiptKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const keyPath = path.join(dir, `${name}.key`);
  const publicPath = path.join(dir, `${name}.pub.pem`);
  await writeFile(keyPath, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  await writeFile(publicPath, publicKey.export({ type: 'spki', format: 'pem' }));
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  return { keyPath, publicPath, publicKey, keyId: sha256Hex(spki) };
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The `[receipts]` section: enabled, with `extra` keys over it. */
export function receiptsSection(
  receiptsPath: string,
  signingKey: string,
  instanceId: string,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { enabled: true, path: receiptsPath, instance_id: instanceId, signing_key: signingKey, ...extra };
}

export type Chain = {
  /** The chain's files in order (by the first seq in their name). */
  readonly files: string[];
  /** Every line, in chain order, without newlines. */
  readonly lines: string[];
  readonly receipts: Receipt[];
  readonly tunnels: TunnelReceipt[];
  readonly gaps: GapReceipt[];
  readonly checkpoints: CheckpointReceipt[];
};

/** The gateway id's files (receipts-<12 digits>.jsonl), decoded. A line that does not decode throws. */
export async function readChain(receiptsPath: string, gatewayId: string): Promise<Chain> {
  const dir = path.join(receiptsPath, gatewayId);
  const names = existsSync(dir) ? (await readdir(dir)).filter((n) => /^receipts-\d{12}\.jsonl$/.test(n)) : [];
  const files = names.sort().map((n) => path.join(dir, n));
  const lines: string[] = [];
  for (const f of files) {
    const text = await readFile(f, 'utf8');
    if (text !== '' && !text.endsWith('\n')) throw new Error(`${f} does not end with a newline`);
    lines.push(...text.split('\n').slice(0, -1));
  }
  const receipts = lines.map((l, i) => {
    try {
      return decodeReceipt(l);
    } catch (err) {
      throw new Error(`line ${i + 1} of ${gatewayId}: ${(err as Error).message}: ${l}`);
    }
  });
  return {
    files,
    lines,
    receipts,
    tunnels: receipts.filter((r): r is TunnelReceipt => r.kind === 'tunnel'),
    gaps: receipts.filter((r): r is GapReceipt => r.kind === 'gap'),
    checkpoints: receipts.filter((r): r is CheckpointReceipt => r.kind === 'checkpoint'),
  };
}

/** Files matching `<name>.torn-<unix ms>` next to the chain's files. */
export async function tornFiles(receiptsPath: string, gatewayId: string): Promise<string[]> {
  const dir = path.join(receiptsPath, gatewayId);
  return (await readdir(dir))
    .filter((n) => /^receipts-\d{12}\.jsonl\.torn-\d+$/.test(n))
    .sort()
    .map((n) => path.join(dir, n));
}

/**
 * What is wrong with the chain, checked here without the verifier under test: seq from 1 by one, each
 * prev the hash of the line before (GENESIS_PREV first), one gateway id, every checkpoint signed by
 * `publicKey` over its signed bytes with key_id = `keyId`, and the last record a checkpoint (nothing
 * after the last signature). Empty when it all holds.
 */
export function chainProblems(
  chain: Chain,
  gatewayId: string,
  publicKey: KeyObject,
  keyId: string,
): string[] {
  const problems: string[] = [];
  let prev = GENESIS_PREV;
  chain.receipts.forEach((r, i) => {
    const at = `record ${i + 1} (seq ${r.seq}, ${r.kind})`;
    if (r.seq !== i + 1) problems.push(`${at}: seq is not ${i + 1}`);
    if (r.prev !== prev) problems.push(`${at}: prev is not the hash of the line before`);
    if (r.gateway !== gatewayId) problems.push(`${at}: gateway ${r.gateway}, not ${gatewayId}`);
    if (r.kind === 'checkpoint') {
      if (r.key_id !== keyId) problems.push(`${at}: key_id ${r.key_id}`);
      const { sig, ...unsigned } = r;
      if (!verifyDerSignature(publicKey, checkpointSignedBytes(unsigned), Buffer.from(sig, 'base64')))
        problems.push(`${at}: signature does not verify`);
    }
    prev = receiptHash(chain.lines[i] as string);
  });
  const last = chain.receipts.at(-1);
  if (last?.kind !== 'checkpoint')
    problems.push(`the last record is ${last?.kind ?? 'missing'}, not a checkpoint`);
  return problems;
}

/** The key from a `receipts-key` output (SPKI PEM) as a KeyObject. */
export function publicKeyFromPem(pem: string): KeyObject {
  const b64 = /-----BEGIN PUBLIC KEY-----([\s\S]+?)-----END PUBLIC KEY-----/.exec(pem)?.[1];
  if (b64 === undefined) throw new Error(`no PUBLIC KEY block in:\n${pem}`);
  return p256PublicKey(Buffer.from(b64.replace(/\s+/g, ''), 'base64'));
}

/** Microseconds between two receipt timestamps. */
export function micros(from: string, to: string): number {
  return Number(parseTimestamp(to) - parseTimestamp(from));
}

type Env = Record<string, string | undefined>;

function merged(env: Env): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete out[k];
    else out[k] = v;
  }
  return out;
}

/** `agent_gateway receipts-key --config <file>`. */
export function receiptsKeyCommand(configPath: string, env: Env = {}): Promise<CommandResult> {
  return runCommand(process.execPath, [GATEWAY_MAIN, 'receipts-key', '--config', configPath], {
    env: merged(env),
    timeoutMs: 60_000,
  });
}

/** `agent_gateway_registry <args…>` (receipts verify|show|export, registry dump). */
export function registryCommand(args: readonly string[], env: Env = {}): Promise<CommandResult> {
  if (!existsSync(REGISTRY_CLI)) throw new Error(`${REGISTRY_CLI} missing: run \`npm run build\` first`);
  return runCommand(process.execPath, [REGISTRY_CLI, ...args], { env: merged(env), timeoutMs: 120_000 });
}

/** `receipts verify <files…> --gateway-key <pem> [extra…]`. */
export function verifyCommand(
  files: readonly string[],
  gatewayKey: string,
  extra: readonly string[] = [],
): Promise<CommandResult> {
  return registryCommand(['receipts', 'verify', ...files, '--gateway-key', gatewayKey, ...extra]);
}

/** Output of a finished command, for assertion messages. */
export function shown(r: CommandResult): string {
  return `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
}

export type PermissionRow = {
  readonly sha256: string;
  readonly signature: string;
  readonly signingKeyId: string;
};

/**
 * What an allowed receipt must say about its grant: SHA-256 of the row's canonical signed bytes
 * (docs/contract.md "Signed bytes"), its signature (base64) and signer, read back from the registry.
 */
export function permissionRow(databaseUrl: string, permissionId: string): Promise<PermissionRow> {
  return withClient(databaseUrl, async (c) => {
    const ts = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;
    const r = await c.query<{
      signing_key_id: string;
      subject_identity: string;
      spki: Buffer;
      destination: string;
      nb: string;
      na: string;
      signature: Buffer;
    }>(
      `SELECT signing_key_id, subject_identity, subject_public_key_spki_der AS spki, destination,
              ${ts('not_before')} AS nb, ${ts('not_after')} AS na, signature
       FROM permission_registry WHERE permission_id = $1`,
      [permissionId],
    );
    const row = r.rows[0];
    if (row === undefined) throw new Error(`no permission row ${permissionId}`);
    const bytes = canonicalPermissionBytes({
      permissionId,
      signingKeyId: row.signing_key_id,
      subjectIdentity: row.subject_identity,
      subjectSpkiDer: row.spki,
      destination: row.destination,
      notBefore: parseTimestamp(row.nb),
      notAfter: parseTimestamp(row.na),
    });
    return {
      sha256: sha256Hex(bytes),
      signature: row.signature.toString('base64'),
      signingKeyId: row.signing_key_id,
    };
  });
}

/**
 * A copy of the chain's files under `dir` with one record tampered with in the middle of the fullest
 * file: `edit` changes bytes_up (the line stays canonical, so only the chain shows it), `delete` drops
 * the line, `swap` exchanges it with the next. `seqs`: the seq of the record touched and of the one after
 * (where a chain break shows), one of which the verifier's report must name.
 */
export async function tamperedCopy(
  chain: Chain,
  dir: string,
  how: 'edit' | 'delete' | 'swap',
): Promise<{ files: string[]; seqs: number[] }> {
  const out = path.join(dir, `tampered-${how}-${Date.now()}`);
  await mkdir(out, { recursive: true });
  const texts = await Promise.all(chain.files.map((f) => readFile(f, 'utf8')));
  const fullest = texts.reduce((best, t, i) => (t.length > (texts[best] as string).length ? i : best), 0);
  const lines = (texts[fullest] as string).split('\n').slice(0, -1);
  const k = Math.floor(lines.length / 2);
  const target = decodeReceipt(lines[k] as string);
  if (target.kind !== 'tunnel' || k + 1 >= lines.length)
    throw new Error(
      `line ${k + 1} of ${chain.files[fullest]} is not a tunnel record in the middle of the file`,
    );
  if (how === 'edit') {
    lines[k] = encodeReceipt({ ...target, bytes_up: target.bytes_up + 1 });
  } else if (how === 'delete') {
    lines.splice(k, 1);
  } else {
    [lines[k], lines[k + 1]] = [lines[k + 1] as string, lines[k] as string];
  }
  const files: string[] = [];
  for (const [i, f] of chain.files.entries()) {
    const to = path.join(out, path.basename(f));
    if (i === fullest) await writeFile(to, `${lines.join('\n')}\n`);
    else await copyFile(f, to);
    files.push(to);
  }
  return { files, seqs: [target.seq, target.seq + 1] };
}

/** Poll the chain until `done` holds (a line being written is not yet readable: try again). */
export async function waitForChain(
  receiptsPath: string,
  gatewayId: string,
  done: (chain: Chain) => boolean,
  timeoutMs = 10_000,
): Promise<Chain> {
  const end = Date.now() + timeoutMs;
  let last = 'no chain read yet';
  for (;;) {
    try {
      const chain = await readChain(receiptsPath, gatewayId);
      if (done(chain)) return chain;
      last = `${chain.receipts.length} records, ${chain.tunnels.length} tunnels`;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > end) throw new Error(`chain ${gatewayId} not as wanted within ${timeoutMs} ms: ${last}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * `n` echo tunnels to `authority` on one new connection, one after another, each sending a different
 * number of bytes from `firstBytes` up and closing cleanly. Returns the byte counts sent.
 */
export async function echoTunnels(
  gw: GatewayProcess,
  carrier: Carrier,
  authority: string,
  n: number,
  firstBytes = 1000,
): Promise<number[]> {
  const session = await connectH2(gw.port, { ca: gw.caPem, carrier });
  const sent: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const t = await openTunnel(session, authority);
      if (t.status !== 200)
        throw new Error(
          `CONNECT ${authority}: ${t.status} ${String(t.headers['agent-gateway-deny-reason'])}`,
        );
      const size = firstBytes + i;
      await roundTrip(t.stream, Buffer.alloc(size, 0x61));
      t.stream.end();
      t.stream.resume();
      await closed(t.stream);
      sent.push(size);
    }
  } finally {
    await closeSession(session);
  }
  return sent;
}
