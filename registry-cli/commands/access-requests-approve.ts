/**
 * agent-permissions approve REQUEST_ID KEY_ID [--for DURATION | --days N] [--permission-id ID], and
 * approve --all-pending --identity ID KEY_ID [--yes]: sign the permission an access request asks for
 * (its identity, agent key and destination) with the principal's TPM key, through exactly the code path
 * of `grant` (registry-cli/sign-permission.ts: key, scope and the gateway's own policy), and mark the
 * request approved with the permission id in the same transaction (docs/contract.md "Access requests").
 */
import { spkiFingerprint } from '../../core/spki-input.js';
import { signerOptionsFromEnv } from '../../pkcs11/signer-options.js';
import {
  type AccessRequestRecord,
  activePermissions,
  assertAccessRequestSchema,
  listAccessRequests,
  markApproved,
  readAccessRequest,
} from '../access-request-writes.js';
import { checkField, checkKeyId, parseRequestId, type Validity } from '../args.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, EXIT_REFUSED, type ExitCode, Refusal } from '../errors.js';
import type { CommandContext } from '../io.js';
import { grantNotes, PrincipalSigner, type SignedGrant, signPermission } from '../sign-permission.js';
import { printRequestTable, visible } from './access-requests-list.js';

export type ApproveOptions = {
  readonly requestId: string;
  readonly keyId: string;
  readonly validity: Validity;
  readonly permissionId?: string | undefined;
  /** Sign for an agent key with no active permission under the identity too. */
  readonly newKey: boolean;
};

export type ApproveAllOptions = {
  readonly identity: string;
  readonly keyId: string;
  readonly validity: Validity;
  readonly yes: boolean;
  readonly newKey: boolean;
};

// What --all-pending lists and signs at most in one run.
const MAX_BATCH = 1000;

export async function approveRequest(ctx: CommandContext, opts: ApproveOptions): Promise<ExitCode> {
  const requestId = parseRequestId(opts.requestId);
  const keyId = checkKeyId(opts.keyId);
  const permissionId =
    opts.permissionId === undefined ? undefined : checkField('--permission-id', opts.permissionId);
  const target = databaseFromEnv(ctx.env);
  const signer = new PrincipalSigner(signerOptionsFromEnv(keyId, ctx.env));
  try {
    const approved = await withRegistry(target, (registry) =>
      registry.transaction(async (db) => {
        await assertAccessRequestSchema(db);
        const request = await readAccessRequest(db, requestId);
        if (request === undefined) throw new Refusal(`no access request ${requestId}`);
        assertPending(request);
        if (
          !opts.newKey &&
          (await activePermissions(db, request.subjectIdentity, request.subjectSpkiDer)) === 0
        ) {
          throw new Refusal(
            `agent key sha256 ${request.subjectSpkiSha256} has no active permission as ` +
              `${visible(request.subjectIdentity)}; anyone can claim an identity with a key of their own: ` +
              "compare this fingerprint with the agent's key, then approve with --new-key. Nothing was signed",
          );
        }
        return { grant: await approveOne(db, signer, request, keyId, opts.validity, permissionId) };
      }),
    );
    printApproved(ctx, requestId, approved.grant);
  } finally {
    signer.close();
  }
  return EXIT_OK;
}

export async function approveAllPending(ctx: CommandContext, opts: ApproveAllOptions): Promise<ExitCode> {
  const identity = checkField('--identity', opts.identity);
  const keyId = checkKeyId(opts.keyId);
  const target = databaseFromEnv(ctx.env);
  const signer = new PrincipalSigner(signerOptionsFromEnv(keyId, ctx.env));
  try {
    return await withRegistry(target, async (registry) => {
      // Listed and asked outside any transaction: no row stays locked while a principal reads.
      const { rows, newKeys } = await registry.transaction(async (db) => {
        await db.query('SET TRANSACTION READ ONLY');
        await assertAccessRequestSchema(db);
        const rows = await listAccessRequests(db, { pendingOnly: true, identity, limit: MAX_BATCH });
        const newKeys = new Set<string>();
        for (const r of rows) {
          if ((await activePermissions(db, identity, r.subjectSpkiDer)) === 0)
            newKeys.add(r.subjectSpkiSha256);
        }
        return { rows: opts.newKey ? rows : rows.filter((r) => !newKeys.has(r.subjectSpkiSha256)), newKeys };
      });
      warnAboutKeys(ctx, identity, opts.newKey, newKeys);
      if (rows.length === 0) {
        ctx.io.err(
          newKeys.size > 0
            ? `nothing signed: every pending request of ${visible(identity)} is from a key left out above`
            : `no pending access requests for ${visible(identity)}: nothing signed`,
        );
        return EXIT_REFUSED;
      }
      printRequestTable(ctx.io, rows, false);
      if (rows.length === MAX_BATCH)
        ctx.io.err(`note: only the ${MAX_BATCH} most recent requests are listed`);
      const keys = new Set(rows.map((r) => r.subjectSpkiSha256));
      if (keys.size > 1) {
        ctx.io.err(
          `warning: these requests come from ${keys.size} different agent keys claiming ${visible(identity)}`,
        );
      }
      const question = `sign ${rows.length} permission${rows.length === 1 ? '' : 's'} for ${visible(identity)} with ${keyId}? [y/N] `;
      if (!opts.yes && !((await ctx.io.confirm?.(question)) ?? false)) {
        ctx.io.err('nothing signed (answer was not yes; --yes skips the question)');
        return EXIT_REFUSED;
      }
      const { grants, skipped } = await registry.transaction(async (db) => {
        const signed: [string, SignedGrant][] = [];
        const refused: [string, string][] = [];
        // One request grant refuses (outside the scope, say) must not sink the others: each is signed
        // behind a savepoint, and a refusal rolls back only that one.
        for (const r of rows) {
          await db.query('SAVEPOINT approve_one');
          try {
            signed.push([r.requestId, await signRequest(db, signer, r, keyId, opts.validity, undefined)]);
            await db.query('RELEASE SAVEPOINT approve_one');
          } catch (err) {
            if (!(err instanceof Refusal)) throw err;
            await db.query('ROLLBACK TO SAVEPOINT approve_one');
            refused.push([r.requestId, err.message]);
          }
        }
        // The rows are marked last, in id order, so no request row stays locked while the TPM signs
        // (the gateways' recording updates them).
        for (const [requestId, grant] of [...signed].sort(([a], [b]) => (a < b ? -1 : 1)))
          await markOrRollBack(db, requestId, grant, keyId);
        return { grants: signed, skipped: refused };
      });
      for (const [requestId, grant] of grants) printApproved(ctx, requestId, grant);
      for (const [requestId, why] of skipped) ctx.io.err(`not approved ${requestId}: ${why}`);
      ctx.io.out(`approved ${grants.length} access requests for ${visible(identity)}`);
      return grants.length > 0 ? EXIT_OK : EXIT_REFUSED;
    });
  } finally {
    signer.close();
  }
}

function assertPending(request: AccessRequestRecord): void {
  if (request.status === 'pending') return;
  const decided =
    request.status === 'approved'
      ? ` at ${request.decidedAt} by ${request.decidedBy} as ${request.permissionId}`
      : ` at ${request.decidedAt}`;
  throw new Refusal(`access request ${request.requestId} is ${request.status}${decided}, not pending`);
}

/** Sign the request's permission and mark it approved; a request decided meanwhile rolls it all back. */
async function approveOne(
  db: Parameters<typeof signPermission>[0],
  signer: PrincipalSigner,
  request: AccessRequestRecord,
  keyId: string,
  validity: Validity,
  permissionId: string | undefined,
): Promise<SignedGrant> {
  const grant = await signRequest(db, signer, request, keyId, validity, permissionId);
  await markOrRollBack(db, request.requestId, grant, keyId);
  return grant;
}

/** The permission a request asks for, signed through grant's code path. */
function signRequest(
  db: Parameters<typeof signPermission>[0],
  signer: PrincipalSigner,
  request: AccessRequestRecord,
  keyId: string,
  validity: Validity,
  permissionId: string | undefined,
): Promise<SignedGrant> {
  return signPermission(db, signer, {
    keyId,
    subjectIdentity: request.subjectIdentity,
    subjectSpkiDer: request.subjectSpkiDer,
    destination: request.destination,
    validity,
    permissionId,
    shorterWindowHint: (days) => `use --days of at most ${days} (or a shorter --for)`,
  });
}

/** Mark the request approved; one decided meanwhile refuses, and the caller's transaction rolls back. */
async function markOrRollBack(
  db: Parameters<typeof signPermission>[0],
  requestId: string,
  grant: SignedGrant,
  keyId: string,
): Promise<void> {
  if ((await markApproved(db, requestId, grant.row.permissionId, keyId)) === undefined) {
    const now = await readAccessRequest(db, requestId);
    throw new Refusal(
      `access request ${requestId} was decided meanwhile (now ${now?.status ?? 'gone'}); nothing was signed`,
    );
  }
}

/**
 * Anyone who reaches the gateway can claim any identity with a key of their own, so a request names a key,
 * not a person: requests from keys with no active permission under the identity are left out unless
 * --new-key, and named either way.
 */
function warnAboutKeys(
  ctx: CommandContext,
  identity: string,
  included: boolean,
  newKeys: ReadonlySet<string>,
): void {
  for (const k of newKeys) {
    ctx.io.err(
      included
        ? `warning: agent key sha256 ${k} has no active permission as ${visible(identity)}: signing it too (--new-key)`
        : `left out: agent key sha256 ${k} has no active permission as ${visible(identity)} ` +
            "(compare it with the agent's key; --new-key signs it too)",
    );
  }
}

function printApproved(ctx: CommandContext, requestId: string, grant: SignedGrant): void {
  const { row } = grant;
  ctx.io.out(
    `approved ${requestId}: ${visible(row.subjectIdentity)} -> ${row.destination}, permission ${row.permissionId} ` +
      `signed by ${row.signingKeyId}`,
  );
  ctx.io.out(`  agent public key sha256: ${spkiFingerprint(row.subjectSpkiDer)}`);
  ctx.io.out(`  valid: ${row.notBefore} .. ${row.notAfter}`);
  ctx.io.out("  verified with the gateway's policy: allowed");
  for (const note of grantNotes(grant)) ctx.io.err(note);
}
