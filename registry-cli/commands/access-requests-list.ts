/**
 * agent-permissions requests [--pending | --all] [--identity ID] [--json] [--limit N]: the access requests
 * the gateway recorded for denied CONNECTs (docs/contract.md "Access requests"), most recent first.
 */

import {
  type AccessRequestRecord,
  assertAccessRequestSchema,
  listAccessRequests,
} from '../access-request-writes.js';
import { withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, type ExitCode } from '../errors.js';
import type { CommandContext, Io } from '../io.js';

export type RequestsOptions = {
  readonly all: boolean;
  readonly identity?: string | undefined;
  readonly limit: number;
  readonly json: boolean;
};

export async function listRequests(ctx: CommandContext, opts: RequestsOptions): Promise<ExitCode> {
  const target = databaseFromEnv(ctx.env);
  const rows = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      await db.query('SET TRANSACTION READ ONLY');
      await assertAccessRequestSchema(db);
      return listAccessRequests(db, {
        pendingOnly: !opts.all,
        identity: opts.identity,
        limit: opts.limit,
      });
    }),
  );
  if (opts.json) {
    ctx.io.out(JSON.stringify({ requests: rows.map(requestJson) }));
  } else if (rows.length === 0) {
    const which = opts.all ? 'access requests' : 'pending access requests';
    ctx.io.out(opts.identity === undefined ? `no ${which}` : `no ${which} for ${opts.identity}`);
  } else {
    printRequestTable(ctx.io, rows, opts.all);
  }
  if (rows.length === opts.limit) ctx.io.err(`note: output stopped at --limit ${opts.limit} rows`);
  return EXIT_OK;
}

export function requestJson(r: AccessRequestRecord): Record<string, unknown> {
  return {
    request_id: r.requestId,
    subject_identity: r.subjectIdentity,
    subject_public_key_spki_der: r.subjectSpkiDer.toString('hex'),
    subject_public_key_sha256: r.subjectSpkiSha256,
    destination: r.destination,
    request_count: r.requestCount,
    first_seen: r.firstSeen,
    last_seen: r.lastSeen,
    last_deny_reason: r.lastDenyReason,
    status: r.status,
    permission_id: r.permissionId,
    decided_at: r.decidedAt,
    decided_by: r.decidedBy,
  };
}

/** One line per request; the permission column only where decided requests can appear. */
export function printRequestTable(io: Io, rows: readonly AccessRequestRecord[], withDecision: boolean): void {
  const header = [
    'REQUEST_ID',
    'IDENTITY',
    'KEY_SHA256',
    'DESTINATION',
    'COUNT',
    'FIRST_SEEN',
    'LAST_SEEN',
    'LAST_REASON',
    'STATUS',
    ...(withDecision ? ['PERMISSION_ID'] : []),
  ];
  const table = rows.map((r) => [
    r.requestId,
    visible(r.subjectIdentity),
    r.subjectSpkiSha256.slice(0, 16),
    visible(r.destination),
    String(r.requestCount),
    r.firstSeen,
    r.lastSeen,
    visible(r.lastDenyReason),
    r.status,
    ...(withDecision ? [visible(r.permissionId ?? '-')] : []),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  for (const r of [header, ...table])
    io.out(
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    );
}

// The identity is whatever an agent's certificate claimed: it holds no C0 control character (docs/contract.md
// "Identity"), but C1 controls and invisible format characters (bidi overrides) would still let it pose
// as another name on a principal's terminal, so they are shown escaped.
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;

export function visible(text: string): string {
  return text.replace(INVISIBLE, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
}
