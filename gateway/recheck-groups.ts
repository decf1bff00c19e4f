/**
 * How a batch of re-checks is run: tunnels that would ask the registry the same question (identity, key,
 * destination) are grouped so the question is asked once, and the groups go through a small worker pool
 * (the recheck lane's size), so a bulk revoke of a thousand rows is a bounded number of queries in flight.
 */
import type { Grant } from './authorization.js';

export function groupBySubject<E extends { readonly done: boolean; readonly grant: Grant }>(
  batch: readonly E[],
): E[][] {
  const groups = new Map<string, E[]>();
  for (const entry of batch) {
    if (entry.done) continue;
    const g = entry.grant;
    const key = JSON.stringify([g.identity, g.spkiDer.toString('base64'), g.destination]);
    const group = groups.get(key);
    if (group === undefined) groups.set(key, [entry]);
    else group.push(entry);
  }
  return [...groups.values()];
}

/** `fn` over every item, at most `concurrency` at once; no new item starts once `stopped()`. */
export async function forEachConcurrently<T>(
  items: readonly T[],
  concurrency: number,
  fn: (item: T) => Promise<void>,
  stopped: () => boolean,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length && !stopped()) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}
