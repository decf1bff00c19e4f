/**
 * Observe mode (docs/contract.md "Access requests", observe mode): `policy.observe_identities` lets a
 * CONNECT from a listed identity through when the only thing missing is a grant, so an identity can be
 * rolled out and its destinations approved in bulk before it is enforced. The rule lives here, once,
 * and RegistryAuthorizer.evaluate() applies it to every decision it makes: the CONNECT's and every
 * re-check's.
 *
 * "Only a grant is missing" is narrower than the policy's `no_permission` (which is also what a revoked,
 * expired or otherwise inactive row looks like, since only active rows are candidates): the identity
 * must have no row at all for this key and destination, and the key must not be a stranger to an
 * identity the registry already knows (an identity with rows must have an active one under this key).
 */

import { identityLengthError } from '../core/identity-extension.js';
import type { AccessRequest } from '../core/policy.js';
import type { Queryable } from '../core/registry-queries.js';
import type { Micros } from '../core/timestamp.js';
import { formatTimestamp } from '../core/timestamp.js';
import type { Grant } from './authorization.js';
import type { LaneName } from './registry-lane.js';

/** What the observe rule needs of the registry (Registry implements it). */
export type KeyStandingSource = {
  withClient<T>(queryName: string, fn: (client: Queryable) => Promise<T>, lane: LaneName): Promise<T>;
};

/** $1 identity, $2 destination, $3 SPKI, $4 now (text). */
const KEY_STANDING_SQL = `
SELECT
  EXISTS (SELECT 1 FROM permission_registry
           WHERE subject_identity = $1 AND destination = $2 AND subject_public_key_spki_der = $3) AS row_for_request,
  EXISTS (SELECT 1 FROM permission_registry WHERE subject_identity = $1) AS identity_known,
  EXISTS (SELECT 1 FROM permission_registry
           WHERE subject_identity = $1 AND subject_public_key_spki_der = $3 AND revoked_at IS NULL
             AND not_before <= $4::timestamptz AND not_after > $4::timestamptz) AS key_active`;

type KeyStanding = { row_for_request: boolean; identity_known: boolean; key_active: boolean };

/**
 * One `policy.observe_identities` entry as a whole-identity matcher: `*` any run of characters, `?` one
 * character, everything else literal. Throws (the config reader names the entry) on an entry that
 * cannot be a pattern for an identity, or that uses glob syntax this rule does not have.
 */
export function parseIdentityGlob(entry: string): RegExp {
  if (entry === '') throw new Error('must not be empty');
  if (/[\u0000-\u001f\u007f]/.test(entry)) throw new Error('must not contain a control character');
  const tooLong = identityLengthError(entry);
  if (tooLong !== undefined) throw new Error(tooLong.replace('identity', 'pattern'));
  const unsupported = /[[\]{}\\]/.exec(entry);
  if (unsupported !== null) {
    throw new Error(
      `${JSON.stringify(unsupported[0])} is not supported: the only wildcards are * and ?, matched against the whole identity`,
    );
  }
  if (/^[*?]+$/.test(entry))
    throw new Error('must name part of an identity: a pattern of only wildcards observes everyone');
  const body = [...entry]
    .map((ch) => (ch === '*' ? '.*' : ch === '?' ? '.' : ch.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')))
    .join('');
  return new RegExp(`^${body}$`, 'su');
}

export class ObserveRule {
  constructor(
    private readonly patterns: readonly RegExp[],
    private readonly registry: KeyStandingSource,
  ) {}

  get enabled(): boolean {
    return this.patterns.length > 0;
  }

  listed(identity: string): boolean {
    return this.patterns.some((p) => p.test(identity));
  }

  /**
   * Called only for a `no_permission` of a listed identity: the observed grant when only a grant is
   * missing, undefined when a row or another key stands in the way. Throws what the registry throws.
   */
  async observedGrant(request: AccessRequest, now: Micros, lane: LaneName): Promise<Grant | undefined> {
    const standing = await this.registry.withClient(
      'observe_key_standing',
      async (c) =>
        (
          await c.query<KeyStanding>({
            name: 'agent_gateway_observe_key_standing',
            text: KEY_STANDING_SQL,
            values: [request.identity, request.destination, request.spkiDer, formatTimestamp(now)],
          })
        ).rows[0],
      lane,
    );
    if (standing === undefined || standing.row_for_request) return undefined;
    if (standing.identity_known && !standing.key_active) return undefined;
    return {
      identity: request.identity,
      spkiDer: request.spkiDer,
      destination: request.destination,
      permissionId: '',
      signingKeyId: '',
      permissionSha256: null,
      permissionSignature: null,
      scopeId: '',
      // No grant, so no end of its own: the tunnel lasts while re-checks still observe it.
      validUntil: OBSERVED_VALID_UNTIL,
      observedDenyReason: 'no_permission',
    };
  }
}

/** 9999-12-31T23:59:59.999999Z, the largest timestamp (core/timestamp.ts). */
const OBSERVED_VALID_UNTIL: Micros = 253_402_300_799_999_999n;
