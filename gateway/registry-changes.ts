/**
 * What a registry change notification (migrations/0003) says, and which grants it can affect. Shared by
 * the decision cache and live revocation so both react to exactly the same set of changes.
 */
import type { Grant } from './authorization.js';

export type RegistryChange = {
  /** A registry table, or '*' when every grant must be considered touched. */
  readonly table: string;
  readonly op?: string | undefined;
  readonly permissionId?: string | undefined;
  readonly signingKeyId?: string | undefined;
  readonly destination?: string | undefined;
};

export const EVERYTHING: RegistryChange = { table: '*' };

/** Anything unreadable degrades to "everything changed": a spurious re-check is cheap, a missed one is not. */
export function parseRegistryChange(payload: string | undefined): RegistryChange {
  if (payload === undefined || payload === '') return EVERYTHING;
  let raw: unknown;
  try {
    raw = JSON.parse(payload);
  } catch {
    return EVERYTHING;
  }
  if (typeof raw !== 'object' || raw === null) return EVERYTHING;
  const o = raw as Record<string, unknown>;
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  const table = str(o['table']);
  if (table === undefined) return EVERYTHING;
  return {
    table,
    op: str(o['op']),
    permissionId: str(o['permission_id']),
    signingKeyId: str(o['signing_key_id']),
    destination: str(o['destination']),
  };
}

/**
 * Whether `change` may alter the decision behind `grant`. A change to another row for the same subject
 * cannot turn an allow into a deny (the grant's own rows still stand), so it does not count.
 */
export function changeTouchesGrant(change: RegistryChange, grant: Grant): boolean {
  switch (change.table) {
    case 'permission_registry':
      return change.permissionId === undefined || change.permissionId === grant.permissionId;
    case 'principal_signing_keys':
      return change.signingKeyId === undefined || change.signingKeyId === grant.signingKeyId;
    case 'principal_key_permissions':
      return (
        (change.signingKeyId === undefined || change.signingKeyId === grant.signingKeyId) &&
        (change.destination === undefined || change.destination === grant.destination)
      );
    default:
      return true;
  }
}
