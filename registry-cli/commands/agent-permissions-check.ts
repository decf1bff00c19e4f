/**
 * agent-permissions check SUBJECT_IDENTITY SPKI DEST: would the gateway allow this CONNECT now, and why.
 * It runs the gateway's own code against the live registry: the gateway's candidate query and decide()
 * give the answer (exit 0 allow, 1 deny); every row for the triple, revoked or expired ones included,
 * is evaluated with the same policy to say why each does or does not count, link by link from the root
 * (registry-cli/check-chain.ts), judged under the trust roots given.
 */
import { InvalidDestinationError, normalizeDestination } from '../../core/destination.js';
import {
  type AccessRequest,
  type Candidate,
  type CandidateVerdict,
  type Decision,
  decide,
  evaluateCandidate,
  type TrustRoots,
} from '../../core/policy.js';
import { fetchActiveCandidates, fetchExplainCandidates } from '../../core/registry-queries.js';
import { readSpkiInput, spkiFingerprint } from '../../core/spki-input.js';
import { formatTimestamp } from '../../core/timestamp.js';
import { explainChain } from '../check-chain.js';
import { databaseNow, withRegistry } from '../db.js';
import { databaseFromEnv } from '../env.js';
import { EXIT_OK, EXIT_REFUSED, type ExitCode, toCliError, UsageError } from '../errors.js';
import type { CommandContext } from '../io.js';
import { verifySignature } from '../verify.js';

export type CheckOptions = {
  readonly subjectIdentity: string;
  readonly spki: string;
  readonly destination: string;
  readonly json: boolean;
  /** The gateway's trust roots (registry-cli/trust-roots.ts); empty = a gateway without roots. */
  readonly roots: TrustRoots;
};

export async function checkPermission(ctx: CommandContext, opts: CheckOptions): Promise<ExitCode> {
  if (opts.subjectIdentity === '') throw new UsageError('SUBJECT_IDENTITY is empty');
  let destination: string;
  let spkiDer: Buffer;
  try {
    destination = normalizeDestination(opts.destination).normalized;
    spkiDer = readSpkiInput(opts.spki).spkiDer;
  } catch (err) {
    // The gateway answers 400 to an authority it cannot parse: there is nothing to decide.
    if (err instanceof InvalidDestinationError) throw new UsageError(err.message, { cause: err });
    throw toCliError(err);
  }
  const request: AccessRequest = { identity: opts.subjectIdentity, spkiDer, destination };
  const target = databaseFromEnv(ctx.env);

  const { now, gateway, explain, rows } = await withRegistry(target, (registry) =>
    registry.transaction(async (db) => {
      // One snapshot for both queries, so they describe the same registry state.
      await db.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      const now = await databaseNow(db);
      const active = await fetchActiveCandidates(db, request, now.micros);
      const all = await fetchExplainCandidates(db, request);
      return {
        now,
        gateway: decide(request, active, now.micros, verifySignature, opts.roots),
        explain: decide(request, all, now.micros, verifySignature, opts.roots),
        rows: all.map((candidate) => ({
          candidate,
          verdict: evaluateCandidate(request, candidate, now.micros, verifySignature, opts.roots),
        })),
      };
    }),
  );

  // The gateway's decision is the answer; the explain decision names the more useful reason on a deny
  // (the gateway only sees active rows, so for a revoked grant it can only say no_permission).
  const reason = denyReason(gateway, explain);
  if (opts.json) {
    ctx.io.out(
      JSON.stringify({
        decision: gateway.allow ? 'allow' : 'deny',
        ...(gateway.allow
          ? {
              permission_id: gateway.candidate.permission.permissionId,
              valid_until: formatTimestamp(gateway.validUntil),
            }
          : { reason: reason.reason, detail: reason.detail }),
        now: now.text,
        subject_identity: request.identity,
        subject_public_key_sha256: spkiFingerprint(spkiDer),
        destination,
        trust_roots: [...opts.roots.keys()],
        rows: rows.map(({ candidate, verdict }) => rowJson(candidate, verdict, opts.roots)),
      }),
    );
  } else {
    if (gateway.allow) {
      const p = gateway.candidate.permission;
      ctx.io.out(
        `allow: ${request.identity} -> ${destination} by permission ${p.permissionId} (signed by ${p.signingKeyId}), ` +
          `valid until ${formatTimestamp(gateway.validUntil)}`,
      );
    } else {
      ctx.io.out(`deny: ${reason.reason}: ${reason.detail}`);
    }
    ctx.io.out(`  identity: ${request.identity}`);
    ctx.io.out(`  agent public key sha256: ${spkiFingerprint(spkiDer)}`);
    ctx.io.out(`  destination: ${destination}`);
    ctx.io.out(`  registry time: ${now.text}`);
    ctx.io.out(
      opts.roots.size === 0
        ? '  trust roots: none given (--trust-root, --trust-root-file, --config): judged as a gateway without roots'
        : `  trust roots: ${[...opts.roots.keys()].join(', ')}`,
    );
    ctx.io.out(`rows considered: ${rows.length}`);
    for (const { candidate, verdict } of rows) {
      const p = candidate.permission;
      ctx.io.out(
        `  ${p.permissionId} signed by ${p.signingKeyId}, ${p.notBefore} .. ${p.notAfter}: ` +
          (verdict.ok ? 'allow' : `deny ${verdict.reason}: ${verdict.detail}`),
      );
      for (const l of explainChain(candidate, verdict, opts.roots))
        ctx.io.out(`    ${l.link}: ${l.name}: ${l.valid ? 'ok' : 'FAILS'}: ${l.why}`);
    }
  }
  if (gateway.allow !== explain.allow) {
    ctx.io.err(
      'note: the full registry and the gateway candidate query disagree (more live rows than the gateway ' +
        'considers?); the answer above is the gateway query',
    );
  }
  return gateway.allow ? EXIT_OK : EXIT_REFUSED;
}

function denyReason(gateway: Decision, explain: Decision): { reason: string; detail: string } {
  if (!gateway.allow && gateway.reason !== 'no_permission')
    return { reason: gateway.reason, detail: gateway.detail };
  if (!explain.allow) return { reason: explain.reason, detail: explain.detail };
  return gateway.allow ? { reason: '', detail: '' } : { reason: gateway.reason, detail: gateway.detail };
}

function rowJson(
  candidate: Candidate,
  verdict: CandidateVerdict,
  roots: TrustRoots,
): Record<string, unknown> {
  const p = candidate.permission;
  return {
    permission_id: p.permissionId,
    signing_key_id: p.signingKeyId,
    not_before: p.notBefore,
    not_after: p.notAfter,
    revoked_at: p.revokedAt,
    scope_id: candidate.scope?.id ?? null,
    chain: explainChain(candidate, verdict, roots).map((l) => ({
      link: l.link,
      name: l.name,
      signed_by: l.signedBy,
      valid: l.valid,
      why: l.why,
    })),
    verdict: verdict.ok ? 'allow' : 'deny',
    ...(verdict.ok
      ? { valid_until: formatTimestamp(verdict.validUntil) }
      : { reason: verdict.reason, detail: verdict.detail }),
  };
}
