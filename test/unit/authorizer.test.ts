// RegistryAuthorizer against an in-memory candidate source: fail-closed, the allow-only cache, its
// invalidation, and the generation rule that keeps a lookup racing a revoke out of the cache.
import { describe, expect, it } from 'vitest';
import type { Destination } from '../../core/destination.js';
import { normalizeDestination } from '../../core/destination.js';
import type { Grant } from '../../gateway/authorization.js';
import { RegistryAuthorizer } from '../../gateway/authorizer.js';
import { RegistryUnavailableError } from '../../gateway/registry.js';
import { FakeRegistry, holdQueries, kind, NOW, setup } from './fixtures/authorizer-setup.js';
import { allowedCandidate } from './fixtures/signed-rows.js';

describe('RegistryAuthorizer', () => {
  it('allows, then serves the same triple from the cache', async () => {
    const s = setup();
    expect(kind(await s.authorize())).toBe('allow');
    expect(kind(await s.authorize())).toBe('allow(cached)');
    expect(s.registry.calls).toBe(1);
    const r = await s.authorize();
    expect(r.allow && r.grant).toMatchObject({
      identity: 'agent-alpha',
      destination: 'api.example.com:443',
      permissionId: 'perm-1',
      signingKeyId: 'org-alice',
      scopeId: '1',
      validUntil: s.fx.spec.notAfter,
    });
    expect((await s.metrics.decisionCacheHits.get()).values[0]?.value).toBe(2);
    expect((await s.metrics.decisionCacheMisses.get()).values[0]?.value).toBe(1);
    // Every decision is timed; the CONNECT outcome counter is the connect handler's, not counted here.
    const timed = await s.metrics.decisionSeconds.get();
    expect(
      timed.values.find(
        (v) => v.metricName === 'agent_gateway_decision_seconds_count' && v.labels['result'] === 'allow',
      )?.value,
    ).toBe(3);
    expect((await s.metrics.connectDecisions.get()).values).toEqual([]);
  });

  it('never caches denies without a denial ttl', async () => {
    const s = setup();
    s.registry.rows = [];
    expect(kind(await s.authorize())).toBe('deny(no_permission)');
    expect(kind(await s.authorize())).toBe('deny(no_permission)');
    expect(s.registry.calls).toBe(2);
  });

  it('remembers a denial for the denial ttl, and forgets every denial on any registry change', async () => {
    const s = setup({ denialTtlMs: 2000 });
    s.registry.rows = [];
    expect(kind(await s.authorize())).toBe('deny(no_permission)');
    expect(kind(await s.authorize())).toBe('deny(no_permission)');
    expect(s.registry.calls).toBe(1);
    expect((await s.metrics.denialCacheHits.get()).values[0]?.value).toBe(1);
    // A change to any row (here: another principal's key) may have granted this triple.
    s.authorizer.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: 'org-zed' });
    s.registry.rows = [s.fx.candidate];
    expect(kind(await s.authorize())).toBe('allow');
    expect(s.registry.calls).toBe(2);
    // And the ttl bounds it even without a change.
    s.registry.rows = [];
    s.authorizer.onRegistryChange({ table: 'permission_registry', permissionId: 'perm-1' });
    expect(kind(await s.authorize())).toBe('deny(no_permission)');
    s.advance(2_000_001n);
    expect(kind(await s.authorize())).toBe('deny(no_permission)');
    expect(s.registry.calls).toBe(4);
  });

  it('keeps no denial while the listener is down, and none from a lookup that raced a change', async () => {
    const down = setup({ denialTtlMs: 2000, listenerUp: false });
    down.registry.rows = [];
    await down.authorize();
    await down.authorize();
    expect(down.registry.calls).toBe(2);

    const s = setup({ denialTtlMs: 2000 });
    s.registry.rows = [];
    let release!: () => void;
    s.registry.gate = new Promise((r) => {
      release = r;
    });
    const pending = s.authorize();
    s.authorizer.onRegistryChange({ table: 'permission_registry', permissionId: 'perm-9' });
    release();
    s.registry.gate = undefined;
    expect(kind(await pending)).toBe('deny(no_permission)');
    await s.authorize();
    expect(s.registry.calls).toBe(2);
  });

  it('answers registry_busy (not registry_unavailable) when the lookup lane is full', async () => {
    const s = setup();
    s.registry.fail = new RegistryUnavailableError('busy', '32 registry lookups in flight');
    const r = await s.authorize();
    expect(kind(r)).toBe('deny(registry_busy)');
  });

  it('fails closed on a registry error and tries again on the next request', async () => {
    const s = setup();
    s.registry.fail = new RegistryUnavailableError('query_timeout', 'slow');
    const r = await s.authorize();
    expect(kind(r)).toBe('deny(registry_unavailable)');
    expect(!r.allow && r.detail).toMatch(/query_timeout/);
    s.registry.fail = new Error('unexpected bug');
    expect(kind(await s.authorize())).toBe('deny(registry_unavailable)');
    s.registry.fail = undefined;
    expect(kind(await s.authorize())).toBe('allow');
    expect(s.registry.calls).toBe(3);
  });

  it('bypasses the cache while the listener is down, and empties it on every transition', async () => {
    const s = setup({ listenerUp: false });
    expect(kind(await s.authorize())).toBe('allow');
    expect(kind(await s.authorize())).toBe('allow');
    s.authorizer.setListenerUp(true);
    expect(kind(await s.authorize())).toBe('allow');
    expect(kind(await s.authorize())).toBe('allow(cached)');
    s.authorizer.setListenerUp(false);
    expect(s.authorizer.cacheStats()).toEqual({ entries: 0, enabled: false });
    expect(kind(await s.authorize())).toBe('allow');
    expect(s.registry.calls).toBe(4);
  });

  // [options, allow cached?, denial cached?, cacheStats().enabled]
  const CACHE_SWITCHES = [
    [{ cacheMaxEntries: 0, denialTtlMs: 1000 }, false, false, false],
    [{ cacheTtlMs: 0 }, false, false, false],
    [{ cacheTtlMs: 0, denialTtlMs: 1000 }, false, true, true],
    [{ cacheTtlMs: 1000 }, true, false, true],
  ] as const;
  it.each(CACHE_SWITCHES)(
    'with %j: allows cached %s, denials cached %s, enabled %s',
    async (opts, allows, denials, on) => {
      const s = setup(opts);
      await s.authorize();
      expect(kind(await s.authorize())).toBe(allows ? 'allow(cached)' : 'allow');
      s.registry.rows = [];
      s.authorizer.onRegistryChange({ table: '*' });
      await s.authorize();
      const calls = s.registry.calls;
      await s.authorize();
      expect(s.registry.calls).toBe(denials ? calls : calls + 1);
      expect(s.authorizer.cacheStats().enabled).toBe(on);
    },
  );

  it('a denial is served until exactly its ttl has passed', async () => {
    const s = setup({ denialTtlMs: 2000 });
    s.registry.rows = [];
    await s.authorize();
    s.advance(1_999_999n);
    await s.authorize();
    expect(s.registry.calls).toBe(1);
    s.advance(1n);
    await s.authorize();
    expect(s.registry.calls).toBe(2);
  });

  it('a grant served from the cache is fresh until a change touches it', async () => {
    const s = setup();
    await s.authorize();
    s.authorizer.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: 'org-bob' });
    const hit = await s.authorize();
    if (!hit.allow || !hit.cached) throw new Error('expected a cache hit');
    expect(s.authorizer.grantMayBeStale(hit.grant)).toBe(false);
    s.authorizer.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: 'org-alice' });
    expect(s.authorizer.grantMayBeStale(hit.grant)).toBe(true);
  });

  it('the listener going down and up again: a repeat report changes nothing, a transition forgets', async () => {
    const s = setup({ denialTtlMs: 60_000 });
    const first = await s.authorize();
    if (!first.allow) throw new Error('expected allow');
    const gen = s.authorizer.currentGeneration();
    s.authorizer.setListenerUp(true); // already up
    expect(s.authorizer.currentGeneration()).toBe(gen);
    expect(s.authorizer.grantMayBeStale(first.grant)).toBe(false);
    expect(kind(await s.authorize())).toBe('allow(cached)');

    // A lookup that started before a down-and-up must not be cached: it was never covered by a notification.
    const release = holdQueries(s.registry);
    s.authorizer.setListenerUp(false);
    s.authorizer.setListenerUp(true);
    const inflight = s.authorize();
    s.authorizer.setListenerUp(false);
    s.authorizer.setListenerUp(true);
    release();
    expect(kind(await inflight)).toBe('allow');
    expect(s.authorizer.cacheStats().entries).toBe(0);
    expect(s.authorizer.grantMayBeStale(first.grant)).toBe(true);

    // A cached denial does not survive a transition either.
    s.registry.rows = [];
    expect(kind(await s.authorize())).toBe('deny(no_permission)');
    s.authorizer.setListenerUp(false);
    s.authorizer.setListenerUp(true);
    s.registry.rows = [s.fx.candidate];
    expect(kind(await s.authorize())).toBe('allow');
  });

  // Which notifications evict the cached grant (perm-1 / org-alice / api.example.com:443).
  const INVALIDATIONS = [
    [{ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-1', signingKeyId: 'org-alice' }, true],
    [
      { table: 'permission_registry', op: 'INSERT', permissionId: 'perm-9', signingKeyId: 'org-alice' },
      false,
    ],
    [{ table: 'permission_registry', op: 'UPDATE' }, true],
    [{ table: 'principal_signing_keys', op: 'UPDATE', signingKeyId: 'org-alice' }, true],
    [{ table: 'principal_signing_keys', op: 'UPDATE', signingKeyId: 'org-bob' }, false],
    [
      {
        table: 'principal_key_permissions',
        op: 'UPDATE',
        signingKeyId: 'org-alice',
        destination: 'api.example.com:443',
      },
      true,
    ],
    [
      {
        table: 'principal_key_permissions',
        op: 'UPDATE',
        signingKeyId: 'org-alice',
        destination: 'other:443',
      },
      false,
    ],
    [
      {
        table: 'principal_key_permissions',
        op: 'UPDATE',
        signingKeyId: 'org-bob',
        destination: 'api.example.com:443',
      },
      false,
    ],
    [{ table: '*', op: 'TRUNCATE' }, true],
    [{ table: 'some_future_table' }, true],
  ] as const;
  it.each(INVALIDATIONS)('notification %j evicts: %s', async (change, evicts) => {
    const s = setup();
    await s.authorize();
    s.authorizer.onRegistryChange(change);
    expect(kind(await s.authorize())).toBe(evicts ? 'allow' : 'allow(cached)');
  });

  it('a lookup that started before an invalidation does not populate the cache', async () => {
    const s = setup();
    let release!: () => void;
    s.registry.gate = new Promise((r) => {
      release = r;
    });
    const inflight = s.authorize(); // snapshot taken "before the revoke"
    await Promise.resolve();
    // The revoke commits and its notification arrives while the query is still out.
    s.authorizer.onRegistryChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-1' });
    s.registry.rows = [];
    release();
    expect(kind(await inflight)).toBe('allow'); // answered from its own (old) snapshot...
    s.registry.gate = undefined;
    expect(kind(await s.authorize())).toBe('deny(no_permission)'); // ...but never served again
    expect(s.authorizer.cacheStats().entries).toBe(0);
  });

  it('even an unrelated change blocks in-flight inserts (cheap and simple)', async () => {
    const s = setup();
    let release!: () => void;
    s.registry.gate = new Promise((r) => {
      release = r;
    });
    const inflight = s.authorize();
    await Promise.resolve();
    s.authorizer.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: 'org-bob' });
    release();
    await inflight;
    expect(s.authorizer.cacheStats().entries).toBe(0);
  });

  it('entries age out after the ttl and never outlive the grant', async () => {
    const s = setup({ cacheTtlMs: 1000 });
    await s.authorize();
    s.advance(999_000n);
    expect(kind(await s.authorize())).toBe('allow(cached)');
    s.advance(1_000n);
    expect(kind(await s.authorize())).toBe('allow');

    const short = setup({ cacheTtlMs: 3_600_000 });
    // Grant ends in 2 s: the cache may not serve it after that.
    const scopeEnds = NOW + 2_000_000n;
    short.registry.rows = [
      {
        ...short.fx.candidate,
        signer: { ...short.fx.candidate.signer!, notAfter: '2026-05-10T12:00:02.000000Z' },
      },
    ];
    const first = await short.authorize();
    expect(first.allow && first.grant.validUntil).toBe(scopeEnds);
    short.advance(1_999_999n);
    expect(kind(await short.authorize())).toBe('allow(cached)');
    short.advance(1n);
    short.registry.rows = [];
    expect(kind(await short.authorize())).toBe('deny(no_permission)');
    expect(short.authorizer.cacheStats().entries).toBe(0); // the expired entry went, not only unused
  });

  it('is a bounded LRU', async () => {
    const s = setup({ cacheMaxEntries: 2 });
    const dests = ['a.example:443', 'b.example:443', 'c.example:443'].map((d) => normalizeDestination(d));
    // The fake returns a candidate for a.example only when asked about it: build one per destination.
    const byDest = new Map(
      dests.map((d) => [d.normalized, allowedCandidate(NOW, { destination: d.normalized })]),
    );
    const peerFor = (d: Destination) => {
      const f = byDest.get(d.normalized)!;
      return { identity: f.request.identity, spkiDer: f.request.spkiDer };
    };
    s.registry.activeCandidates = async (request) => {
      s.registry.calls++;
      return [byDest.get(request.destination)!.candidate];
    };
    const call = (d: Destination) => s.authorizer.authorize(peerFor(d), d);
    await call(dests[0]!);
    await call(dests[1]!);
    expect(kind(await call(dests[0]!))).toBe('allow(cached)'); // a is now most recent
    await call(dests[2]!); // evicts b
    expect(s.authorizer.cacheStats().entries).toBe(2);
    expect(kind(await call(dests[0]!))).toBe('allow(cached)');
    expect(kind(await call(dests[1]!))).toBe('allow');
  });

  it('grantMayBeStale: only changes after the decision that touch the grant count', async () => {
    const s = setup();
    const r = await s.authorize();
    if (!r.allow) throw new Error('expected allow');
    const grant = r.grant;
    expect(s.authorizer.grantMayBeStale(grant)).toBe(false);
    s.authorizer.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: 'org-bob' });
    expect(s.authorizer.grantMayBeStale(grant)).toBe(false);
    s.authorizer.onRegistryChange({ table: 'permission_registry', permissionId: 'perm-1' });
    expect(s.authorizer.grantMayBeStale(grant)).toBe(true);
    // A copied grant object is unknown: re-check it.
    const copy: Grant = { ...grant };
    expect(s.authorizer.grantMayBeStale(copy)).toBe(true);
  });

  it('grantMayBeStale: a change log that no longer reaches back means stale', async () => {
    const fx = allowedCandidate(NOW);
    const registry = new FakeRegistry();
    registry.rows = [fx.candidate];
    const a = new RegistryAuthorizer({
      registry,
      cacheMaxEntries: 10,
      cacheTtlMs: 1000,
      now: () => NOW,
      changeLogSize: 4,
    });
    const r = await a.authorize(fx.request, normalizeDestination(fx.request.destination));
    if (!r.allow) throw new Error('expected allow');
    for (let i = 0; i < 4; i++)
      a.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: `other-${i}` });
    expect(a.grantMayBeStale(r.grant)).toBe(false);
    a.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: 'other-5' });
    expect(a.grantMayBeStale(r.grant)).toBe(true);
  });

  it('grantMayBeStale: a log trimmed to its size still reaches back to a grant decided inside it', async () => {
    // changeLogSize 4: the listener coming up is change 1; the grant is decided after change 3.
    const s = setup({ changeLogSize: 4 });
    for (const id of ['x-2', 'x-3'])
      s.authorizer.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: id });
    const r = await s.authorize();
    if (!r.allow) throw new Error('expected allow');
    for (const id of ['x-4', 'x-5'])
      s.authorizer.onRegistryChange({ table: 'principal_signing_keys', signingKeyId: id });
    expect(s.authorizer.grantMayBeStale(r.grant)).toBe(false);
    // An unknown grant object is stale even when the remembered changes would not touch it.
    expect(s.authorizer.grantMayBeStale({ ...r.grant })).toBe(true);
  });
});
