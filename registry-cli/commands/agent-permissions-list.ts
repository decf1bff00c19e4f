/**
 * agent-permissions list [--identity ID] [--json]: the permission rows with their own state. Whether the
 * gateway would actually allow a connection (signature, signer, scope) is what `check` answers.
 */
import { spkiFingerprint } from '../../core/spki-input.js';
import { type Micros, parseTimestamp } from '../../core/timestamp.js';
import { databaseNow, withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode } from '../errors.js';
import type { CommandContext } from '../io.js';
import { listPermissions, type PermissionRecord } from '../registry-writes.js';

export type ListOptions = {
  readonly identity?: string | undefined;
  readonly limit: number;
  readonly json: boolean;
};

type RowState = 'active' | 'revoked' | 'expired' | 'not_yet_valid';

function stateOf(p: PermissionRecord, now: Micros): RowState {
  if (p.revokedAt !== null) return 'revoked';
  if (now < parseTimestamp(p.notBefore)) return 'not_yet_valid';
  if (now >= parseTimestamp(p.notAfter)) return 'expired';
  return 'active';
}

export async function listAgentPermissions(ctx: CommandContext, opts: ListOptions): Promise<ExitCode> {
  const target = databaseFromEnv(ctx.env);
  const { rows, now } = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      await db.query('SET TRANSACTION READ ONLY');
      const now = await databaseNow(db);
      return { rows: await listPermissions(db, { identity: opts.identity, limit: opts.limit }), now };
    }),
  );

  if (opts.json) {
    ctx.io.out(
      JSON.stringify({
        now: now.text,
        permissions: rows.map((p) => ({
          permission_id: p.permissionId,
          signing_key_id: p.signingKeyId,
          subject_identity: p.subjectIdentity,
          subject_public_key_spki_der: p.subjectSpkiDer.toString('hex'),
          subject_public_key_sha256: spkiFingerprint(p.subjectSpkiDer),
          destination: p.destination,
          not_before: p.notBefore,
          not_after: p.notAfter,
          revoked_at: p.revokedAt,
          state: stateOf(p, now.micros),
        })),
      }),
    );
    return EXIT_OK;
  }
  if (rows.length === 0) {
    ctx.io.out(opts.identity === undefined ? 'no permissions' : `no permissions for ${opts.identity}`);
    return EXIT_OK;
  }
  const table = rows.map((p) => [
    p.subjectIdentity,
    p.destination,
    stateOf(p, now.micros),
    p.permissionId,
    p.signingKeyId,
    spkiFingerprint(p.subjectSpkiDer).slice(0, 16),
    p.notBefore,
    p.notAfter,
    p.revokedAt ?? '-',
  ]);
  const header = [
    'IDENTITY',
    'DESTINATION',
    'STATE',
    'PERMISSION_ID',
    'SIGNED_BY',
    'KEY_SHA256',
    'NOT_BEFORE',
    'NOT_AFTER',
    'REVOKED_AT',
  ];
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  for (const r of [header, ...table])
    ctx.io.out(
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    );
  if (rows.length === opts.limit) ctx.io.err(`note: output stopped at --limit ${opts.limit} rows`);
  return EXIT_OK;
}
