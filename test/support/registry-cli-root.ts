// Root-of-trust helpers for the registry CLI e2e tests (registry-cli-root*.test.ts), on top of
// registry-cli-suite.ts: run init-root, and ask the gateway's own query and policy (core/) what it
// decides for a request under a given set of trust roots, so a test checks the rows by verifying them,
// not by re-reading what the CLI wrote.
import path from 'node:path';
import { expect } from 'vitest';
import { type Decision, decide, type TrustRoots } from '../../core/policy.js';
import { fetchActiveCandidates } from '../../core/registry-queries.js';
import { rootKeyId } from '../../core/root-signed-bytes.js';
import { parseTimestamp } from '../../core/timestamp.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { runCommand } from '../../dev-support/run-command.js';
import { verifySignature } from '../../registry-cli/verify.js';
import { db, env } from './registry-cli-suite.js';

export type Root = {
  readonly id: string;
  readonly spkiDer: Buffer;
  readonly base64: string;
  readonly stdout: string;
};

/** registry-cli/init-root.sh LABEL through the wrapper; the id and SPKI as printed. */
export async function initRoot(label: string): Promise<Root> {
  const r = await runCommand(path.join(repoRoot, 'registry-cli', 'init-root.sh'), [label], { env });
  expect(r.code, r.stderr).toBe(0);
  const id = /^root_key_id: (sha256:[0-9a-f]{64})$/m.exec(r.stdout)?.[1];
  const base64 = /^trust_roots = \["([A-Za-z0-9+/=]+)"\]$/m.exec(r.stdout)?.[1];
  if (id === undefined || base64 === undefined)
    throw new Error(`init-root printed no id or SPKI: ${r.stdout}`);
  return { id, spkiDer: Buffer.from(base64, 'base64'), base64, stdout: r.stdout };
}

export const rootsOf = (...roots: Root[]): TrustRoots => new Map(roots.map((r) => [r.id, r.spkiDer]));

/** The gateway's decision now for identity/key/destination under `roots` (core's query and policy). */
export async function gatewayDecision(
  identity: string,
  spkiDer: Buffer,
  destination: string,
  roots: TrustRoots,
): Promise<Decision> {
  const now = await db.query<{ now: string }>(
    `SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS now`,
  );
  const at = parseTimestamp(now.rows[0]!.now);
  const request = { identity, spkiDer, destination };
  return decide(request, await fetchActiveCandidates(db, request, at), at, verifySignature, roots);
}

/** The root columns of a key and of its scope rows, for checks of which root signed what. */
export async function rootColumns(keyId: string) {
  const k = await db.query<{ root_key_id: string | null }>(
    'SELECT root_key_id FROM principal_signing_keys WHERE key_id = $1',
    [keyId],
  );
  const s = await db.query<{ destination: string; root_key_id: string | null }>(
    `SELECT destination, root_key_id FROM principal_key_permissions
     WHERE signing_key_id = $1 AND revoked_at IS NULL ORDER BY destination`,
    [keyId],
  );
  return { key: k.rows[0]?.root_key_id ?? null, scopes: s.rows };
}

export { rootKeyId };

/** Run the CLI with `input` on its stdin (an admin answering a question) and insist on an exit code. */
export async function expectExitAnswering(code: number, args: string[], input: string) {
  const cli = path.join(repoRoot, 'dist', 'registry-cli', 'cli.js');
  const r = await runCommand(process.execPath, [cli, ...args], { env, input, timeoutMs: 60_000 });
  expect(r.code, `${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(code);
  return r;
}
