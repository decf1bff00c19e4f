/**
 * Open tunnels indexed by the registry rows their grant rests on (permission, signer, signer scope), so a
 * change notification marks exactly the tunnels it can affect (the same rule as registry-changes.ts).
 */
import type { Grant } from './authorization.js';
import type { RegistryChange } from './registry-changes.js';

export type Indexed = { readonly grant: Grant };

export class TunnelIndex<E extends Indexed> {
  private readonly all = new Set<E>();
  private readonly byPermission = new Map<string, Set<E>>();
  private readonly bySigner = new Map<string, Set<E>>();
  private readonly byScope = new Map<string, Set<E>>();

  get size(): number {
    return this.all.size;
  }

  entries(): IterableIterator<E> {
    return this.all.values();
  }

  add(entry: E): void {
    this.all.add(entry);
    const g = entry.grant;
    addTo(this.byPermission, g.permissionId, entry);
    addTo(this.bySigner, g.signingKeyId, entry);
    addTo(this.byScope, scopeKey(g.signingKeyId, g.destination), entry);
  }

  /** Must be called with the grant the entry was added under (before its grant changes). */
  remove(entry: E): void {
    this.all.delete(entry);
    const g = entry.grant;
    removeFrom(this.byPermission, g.permissionId, entry);
    removeFrom(this.bySigner, g.signingKeyId, entry);
    removeFrom(this.byScope, scopeKey(g.signingKeyId, g.destination), entry);
  }

  affected(change: RegistryChange): Iterable<E> {
    switch (change.table) {
      case 'permission_registry':
        return change.permissionId === undefined
          ? this.all
          : (this.byPermission.get(change.permissionId) ?? []);
      case 'principal_signing_keys':
        return change.signingKeyId === undefined ? this.all : (this.bySigner.get(change.signingKeyId) ?? []);
      case 'principal_key_permissions':
        if (change.signingKeyId === undefined) return this.all;
        if (change.destination === undefined) return this.bySigner.get(change.signingKeyId) ?? [];
        return this.byScope.get(scopeKey(change.signingKeyId, change.destination)) ?? [];
      default:
        return this.all;
    }
  }
}

function scopeKey(signingKeyId: string, destination: string): string {
  return JSON.stringify([signingKeyId, destination]);
}

function addTo<E>(map: Map<string, Set<E>>, key: string, entry: E): void {
  const set = map.get(key);
  if (set === undefined) map.set(key, new Set([entry]));
  else set.add(entry);
}

function removeFrom<E>(map: Map<string, Set<E>>, key: string, entry: E): void {
  const set = map.get(key);
  if (set === undefined) return;
  set.delete(entry);
  if (set.size === 0) map.delete(key);
}
