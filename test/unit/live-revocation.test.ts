// LiveRevocation without a database: a real RegistryAuthorizer over an in-memory candidate source, and
// notifications injected through handleChange(). The LISTEN session itself is covered by the DB tests.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { normalizeDestination } from '../../core/destination.js';
import type { AccessRequest, Candidate } from '../../core/policy.js';
import { formatTimestamp, type Micros, nowMicros } from '../../core/timestamp.js';
import type { DenyReason, Grant, LiveTunnel } from '../../gateway/authorization.js';
import { type CandidateSource, RegistryAuthorizer } from '../../gateway/authorizer.js';
import { LiveRevocation } from '../../gateway/live-revocation.js';
import { createGatewayMetrics } from '../../gateway/metrics.js';
import { RegistryUnavailableError } from '../../gateway/registry.js';
import { allowedCandidate, permissionRow } from './fixtures/signed-rows.js';

class Source implements CandidateSource {
  calls = 0;
  down = false;
  /** Candidates by identity. */
  rows = new Map<string, Candidate[]>();
  /** Query time. */
  delayMs = 1;
  /** When set, a query answers with the rows as they were when it started, once this resolves. */
  gate: Promise<void> | undefined;
  async activeCandidates(request: AccessRequest): Promise<Candidate[]> {
    this.calls++;
    const rows = this.rows.get(request.identity) ?? [];
    await sleep(this.delayMs);
    if (this.gate) await this.gate;
    if (this.down) throw new RegistryUnavailableError('connect', 'ECONNREFUSED');
    return rows;
  }
}

class FakeTunnel implements LiveTunnel {
  revoked: { reason: DenyReason | 'expired'; detail: string; at: number } | undefined;
  constructor(
    readonly id: string,
    public grant: Grant,
    readonly peerAddr = '127.0.0.1:1',
  ) {}
  revoke(reason: DenyReason | 'expired', detail: string): void {
    this.revoked ??= { reason, detail, at: Date.now() };
  }
}

const live: LiveRevocation[] = [];
afterEach(async () => {
  for (const l of live.splice(0)) await l.close();
});

function setup(
  recheckIntervalMs = 100,
  more: { unavailableGraceMs?: number; fullRecheckIntervalMs?: number } = {},
) {
  const source = new Source();
  const metrics = createGatewayMetrics({ defaultMetrics: false });
  const authorizer = new RegistryAuthorizer({
    registry: source,
    cacheMaxEntries: 100,
    cacheTtlMs: 60_000,
    metrics,
  });
  const revocation = new LiveRevocation({
    authorizer,
    clientConfig: {},
    notifications: false,
    recheckIntervalMs,
    ...more,
    metrics,
    coalesceMs: 5,
  });
  live.push(revocation);
  // Subject fixtures: rows valid for `lifetimeMs` from now.
  // Keys per identity stay the same across calls, so a second call is a renewal for the same agent.
  const fixtures = new Map<string, ReturnType<typeof allowedCandidate>>();
  const subject = (identity: string, lifetimeMs = 3_600_000, permissionId = 'perm-1') => {
    const now = nowMicros();
    const fx = fixtures.get(identity) ?? allowedCandidate(now, { identity });
    fixtures.set(identity, fx);
    const spec = { ...fx.spec, permissionId, notAfter: now + BigInt(lifetimeMs) * 1000n };
    const candidate: Candidate = { ...fx.candidate, permission: permissionRow(spec, fx.signer.privateKey) };
    source.rows.set(identity, [candidate]);
    return { ...fx, spec, candidate };
  };
  const open = async (identity: string, id: string): Promise<FakeTunnel> => {
    const fx = source.rows.get(identity)![0]!;
    const r = await authorizer.authorize(
      { identity, spkiDer: fx.permission.subjectSpkiDer },
      normalizeDestination(fx.permission.destination),
    );
    if (!r.allow) throw new Error(`expected allow, got ${r.reason}`);
    const t = new FakeTunnel(id, r.grant);
    revocation.track(t);
    return t;
  };
  return { source, metrics, authorizer, revocation, subject, open };
}

async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}

describe('LiveRevocation', () => {
  it('revokes the tunnels of a revoked row with one query per subject, and leaves others running', async () => {
    const s = setup();
    s.subject('agent-a');
    s.subject('agent-b', 3_600_000, 'perm-b');
    const a = await Promise.all([1, 2, 3].map((i) => s.open('agent-a', `a${i}`)));
    const b = await s.open('agent-b', 'b1');
    s.source.calls = 0;
    s.source.rows.set('agent-a', []); // the revoke commits
    s.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-1' });
    await until(() => a.every((t) => t.revoked !== undefined));
    expect(a.map((t) => t.revoked?.reason)).toEqual(['no_permission', 'no_permission', 'no_permission']);
    expect(b.revoked).toBeUndefined();
    expect(s.source.calls).toBe(1);
    expect(s.revocation.state().openTunnels).toBe(1);
    const revocations = await s.metrics.revocations.get();
    expect(revocations.values.find((v) => v.labels['reason'] === 'no_permission')?.value).toBe(3);
  });

  it('coalesces a burst of notifications into one re-check batch', async () => {
    const s = setup();
    s.subject('agent-a');
    const t = await s.open('agent-a', 't');
    s.source.calls = 0;
    for (let i = 0; i < 1000; i++) {
      s.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-1' });
    }
    await sleep(60);
    expect(s.source.calls).toBe(1);
    expect(t.revoked).toBeUndefined();
  });

  it('signer and scope notifications reach the tunnels indexed under them', async () => {
    const s = setup();
    s.subject('agent-a');
    const t = await s.open('agent-a', 't');
    s.source.calls = 0;
    s.revocation.handleChange({ table: 'principal_signing_keys', signingKeyId: 'org-other' });
    s.revocation.handleChange({
      table: 'principal_key_permissions',
      signingKeyId: 'org-alice',
      destination: 'x:443',
    });
    await sleep(40);
    expect(s.source.calls).toBe(0);
    s.revocation.handleChange({
      table: 'principal_key_permissions',
      signingKeyId: 'org-alice',
      destination: 'api.example.com:443',
    });
    await until(() => s.source.calls === 1);
    s.source.rows.set('agent-a', []);
    s.revocation.handleChange({ table: 'principal_signing_keys', signingKeyId: 'org-alice' });
    await until(() => t.revoked !== undefined);
  });

  it('keeps a tunnel that another valid row still allows, under the new row', async () => {
    const s = setup();
    s.subject('agent-a');
    const t = await s.open('agent-a', 't');
    s.subject('agent-a', 3_600_000, 'perm-2'); // perm-1 revoked, perm-2 granted
    s.revocation.handleChange({ table: 'permission_registry', permissionId: 'perm-1' });
    await until(() => t.grant.permissionId === 'perm-2');
    expect(t.revoked).toBeUndefined();
    // Now indexed under perm-2 only.
    s.source.rows.set('agent-a', []);
    s.revocation.handleChange({ table: 'permission_registry', permissionId: 'perm-1' });
    await sleep(40);
    expect(t.revoked).toBeUndefined();
    s.revocation.handleChange({ table: 'permission_registry', permissionId: 'perm-2' });
    await until(() => t.revoked !== undefined);
  });

  it('a re-check that cannot reach the registry keeps the tunnel and retries on the interval', async () => {
    const s = setup(100);
    s.subject('agent-a');
    const t = await s.open('agent-a', 't');
    s.source.down = true;
    s.source.calls = 0;
    s.revocation.handleChange({ table: 'permission_registry', permissionId: 'perm-1' });
    await until(() => s.source.calls >= 1);
    await sleep(30);
    expect(t.revoked).toBeUndefined();
    expect(s.revocation.state().pendingRechecks).toBe(1);
    s.source.down = false;
    s.source.rows.set('agent-a', []);
    await until(() => t.revoked !== undefined, 1000);
    expect(s.source.calls).toBeGreaterThanOrEqual(2);
  });

  it('polls every open tunnel while there is no listener', async () => {
    const s = setup(100);
    await s.revocation.start(); // notifications: false → polling
    s.subject('agent-a');
    const t = await s.open('agent-a', 't');
    expect(s.revocation.state()).toMatchObject({ mode: 'polling', listenerUp: false, openTunnels: 1 });
    s.source.rows.set('agent-a', []); // no notification at all
    await until(() => t.revoked !== undefined, 1000);
  });

  it('ends a tunnel at the earliest not_after, with one timer for many tunnels', async () => {
    const s = setup();
    s.subject('agent-short', 150);
    s.subject('agent-long', 3_600_000);
    const short = await s.open('agent-short', 'short');
    const long = await s.open('agent-long', 'long');
    const started = Date.now();
    await until(() => short.revoked !== undefined, 1000);
    expect(short.revoked?.reason).toBe('expired');
    expect(short.revoked!.at - started).toBeGreaterThanOrEqual(100);
    expect(long.revoked).toBeUndefined();
  });

  it('at expiry a renewed grant keeps the tunnel; without the registry it ends anyway', async () => {
    const s = setup();
    s.subject('agent-a', 120);
    const renewed = await s.open('agent-a', 'renewed');
    s.subject('agent-a', 3_600_000, 'perm-renewal');
    await sleep(250);
    expect(renewed.revoked).toBeUndefined();
    expect(renewed.grant.permissionId).toBe('perm-renewal');

    s.subject('agent-b', 120);
    const cut = await s.open('agent-b', 'cut');
    s.source.down = true;
    await until(() => cut.revoked !== undefined, 1000);
    expect(cut.revoked?.reason).toBe('expired');
    expect(cut.revoked?.detail).toMatch(/registry unavailable/);
  });

  it('re-checks at once a tunnel whose grant predates a processed change', async () => {
    const s = setup();
    s.subject('agent-a');
    const fx = s.source.rows.get('agent-a')![0]!;
    const r = await s.authorizer.authorize(
      { identity: 'agent-a', spkiDer: fx.permission.subjectSpkiDer },
      normalizeDestination(fx.permission.destination),
    );
    if (!r.allow) throw new Error('expected allow');
    // The revoke is processed while the CONNECT is still dialling: no tunnel is tracked yet.
    s.source.rows.set('agent-a', []);
    s.revocation.handleChange({ table: 'permission_registry', permissionId: 'perm-1' });
    await sleep(20);
    const t = new FakeTunnel('late', r.grant);
    s.revocation.track(t);
    await until(() => t.revoked !== undefined);
    expect(t.revoked?.reason).toBe('no_permission');
  });

  it('untrack stops watching; revoke() throwing does not break the batch', async () => {
    const s = setup();
    s.subject('agent-a');
    const t1 = await s.open('agent-a', 't1');
    const t2 = await s.open('agent-a', 't2');
    const t3 = await s.open('agent-a', 't3');
    t2.revoke = () => {
      throw new Error('boom');
    };
    const stop = s.revocation.track(new FakeTunnel('gone', t1.grant));
    stop();
    stop();
    expect(s.revocation.state().openTunnels).toBe(3);
    s.source.rows.set('agent-a', []);
    s.revocation.handleChange({ table: '*' });
    await until(() => t1.revoked !== undefined && t3.revoked !== undefined);
    expect(s.revocation.state().openTunnels).toBe(0);
  });

  it('a tunnel tracked with an already expired grant ends promptly', async () => {
    const s = setup();
    s.subject('agent-a');
    const t = await s.open('agent-a', 't');
    t.grant = { ...t.grant, validUntil: nowMicros() - 1n };
    const t2 = new FakeTunnel('t2', t.grant);
    s.source.rows.set('agent-a', []);
    s.revocation.track(t2);
    await until(() => t2.revoked !== undefined, 500);
    expect(t2.revoked?.reason).toBe('expired');
    expect(formatTimestamp(t.grant.validUntil as Micros)).toMatch(/Z$/);
  });

  it('ends a tunnel as registry_unavailable once its re-checks have failed for longer than the grace', async () => {
    const s = setup(50, { unavailableGraceMs: 300 });
    s.subject('agent-a');
    const t = await s.open('agent-a', 'a1');
    s.source.down = true;
    const downAt = Date.now();
    s.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-1' });
    await until(() => t.revoked !== undefined, 3000);
    expect(t.revoked?.reason).toBe('registry_unavailable');
    expect(t.revoked?.detail).toMatch(/recheck_unavailable_grace_ms/);
    expect(t.revoked!.at - downAt).toBeGreaterThanOrEqual(290);
  });

  it('with grace 0 an unreachable registry never ends a tunnel, and an answer resets the grace', async () => {
    const never = setup(50, { unavailableGraceMs: 0 });
    never.subject('agent-a');
    const t = await never.open('agent-a', 'a1');
    never.source.down = true;
    never.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-1' });
    await sleep(500);
    expect(t.revoked).toBeUndefined();
    expect(never.source.calls).toBeGreaterThan(3);

    const s = setup(50, { unavailableGraceMs: 400 });
    s.subject('agent-b');
    const u = await s.open('agent-b', 'b1');
    s.source.down = true;
    s.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-1' });
    await sleep(250);
    s.source.down = false;
    await s.revocation.recheckAll();
    s.source.down = true;
    await s.revocation.recheckAll();
    await sleep(250);
    // 500 ms after the first failure, but only ~250 ms after the last answer.
    expect(u.revoked).toBeUndefined();
  });

  it('re-checks every tunnel on the full interval, so a change that sent no notification still ends it', async () => {
    for (const full of [0, 100]) {
      const s = setup(60_000, { fullRecheckIntervalMs: full });
      await s.revocation.start();
      s.subject('agent-a');
      const t = await s.open('agent-a', 'a1');
      s.source.rows.set('agent-a', []); // revoked, and nobody told us
      await sleep(400);
      expect(t.revoked?.reason, `full_recheck_interval ${full}`).toBe(
        full === 0 ? undefined : 'no_permission',
      );
    }
  });

  it('a tunnel moved to another row that changed while its query ran is checked again', async () => {
    const s = setup(60_000);
    s.subject('agent-a', 3_600_000, 'perm-A');
    const t = await s.open('agent-a', 'a1');
    s.subject('agent-a', 3_600_000, 'perm-B'); // A is replaced by B
    let release!: () => void;
    s.source.gate = new Promise((r) => {
      release = r;
    });
    s.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-A' });
    await until(() => s.source.calls > 0);
    await sleep(20); // the query is now waiting at the gate
    // B is revoked while that query (which will answer "allowed by B") is still running.
    s.source.rows.set('agent-a', []);
    s.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-B' });
    s.source.gate = undefined;
    release();
    await until(() => t.revoked !== undefined);
    expect(t.revoked?.reason).toBe('no_permission');
  });

  it('a change is re-checked before the rest of a sweep of every tunnel', async () => {
    const s = setup(60_000);
    const tunnels: FakeTunnel[] = [];
    for (let i = 0; i < 100; i++) {
      s.subject(`agent-${i}`, 3_600_000, `perm-${i}`);
      tunnels.push(await s.open(`agent-${i}`, `t${i}`));
    }
    s.source.delayMs = 20; // 100 subjects, 2 at a time: the sweep takes about a second
    const sweep = s.revocation.recheckAll();
    await sleep(60);
    s.source.rows.set('agent-99', []);
    const revokedAt = Date.now();
    s.revocation.handleChange({ table: 'permission_registry', op: 'UPDATE', permissionId: 'perm-99' });
    await until(() => tunnels[99]!.revoked !== undefined, 3000);
    expect(tunnels[99]!.revoked!.at - revokedAt).toBeLessThan(400);
    await sweep;
    expect(tunnels.filter((t) => t.revoked !== undefined)).toHaveLength(1);
  });
});
