// RegistryAuthorizer's decision path apart from its caches: which registry lane asks, what is logged,
// how an unusable signer key or a policy bug ends (a deny, never an allow), decision timing, running
// without metrics, and whose cached answer a peer may get.
import { describe, expect, it } from 'vitest';
import { normalizeDestination } from '../../core/destination.js';
import { permissionDigest } from '../../gateway/receipts/permission-digest.js';
import { RegistryUnavailableError } from '../../gateway/registry.js';
import { kind, NOW, recordingLogger, setup } from './fixtures/authorizer-setup.js';
import { allowedCandidate, newP256 } from './fixtures/signed-rows.js';

describe('RegistryAuthorizer decisions', () => {
  it('asks CONNECT lookups on the lookup lane and re-checks on the recheck lane', async () => {
    const s = setup();
    await s.authorize();
    await s.authorizer.recheck(s.fx.request, NOW);
    await s.authorizer.evaluate(s.fx.request);
    expect(s.registry.lanes).toEqual(['lookup', 'recheck', 'lookup']);
  });

  // Expected registry trouble is the lane's to log; anything else is a bug worth an error line.
  const FAILURES = [
    [new RegistryUnavailableError('query_timeout', 'slow'), 'deny(registry_unavailable)', []],
    [new RegistryUnavailableError('busy', 'full'), 'deny(registry_busy)', []],
    [new TypeError('boom'), 'deny(registry_unavailable)', [['error', 'unexpected registry failure']]],
  ] as const;
  it.each(FAILURES)('a registry failure %s answers %s and logs %j', async (err, answer, logged) => {
    const logger = recordingLogger();
    const s = setup({ logger });
    s.registry.fail = err;
    expect(kind(await s.authorize())).toBe(answer);
    expect(logger.lines).toEqual(logged);
    expect(logger.fields).toEqual(logged.length > 0 ? [{ err: 'boom' }] : []);
  });

  it('binds grants to the row (digest, signature) only with receipts on: off, no lookup hashes the row', async () => {
    const on = setup({ receipts: true });
    const allowed = await on.authorize();
    const p = on.fx.candidate.permission;
    expect(allowed.allow && allowed.grant).toMatchObject({
      permissionSha256: permissionDigest(p),
      permissionSignature: p.signature.toString('base64'),
    });
    expect(allowed.allow && allowed.grant.permissionSha256).toMatch(/^[0-9a-f]{64}$/);
    const off = setup();
    const plain = await off.authorize();
    expect(plain.allow && plain.grant).toMatchObject({ permissionSha256: null, permissionSignature: null });
    const rechecked = await off.authorizer.recheck(off.fx.request, NOW);
    expect(rechecked.kind === 'allow' && rechecked.grant.permissionSha256).toBeNull();
  });

  it('a signer key that does not parse denies with signature_invalid, every time', async () => {
    const logger = recordingLogger();
    const s = setup({ logger });
    const signer = { ...s.fx.candidate.signer!, spkiDer: Buffer.from('not a key') };
    s.registry.rows = [{ ...s.fx.candidate, signer }];
    for (let i = 0; i < 2; i++) {
      const r = await s.authorize();
      expect(kind(r)).toBe('deny(signature_invalid)');
    }
    expect(logger.lines).toEqual([]);
  });

  it('a row that makes the policy throw is a logged registry_unavailable deny, never an allow', async () => {
    const logger = recordingLogger();
    const s = setup({ logger });
    // Not a Buffer: decide() is total over well-formed rows only, and this one is not.
    const permission = { ...s.fx.candidate.permission, subjectSpkiDer: null as unknown as Buffer };
    s.registry.rows = [{ ...s.fx.candidate, permission }];
    const r = await s.authorize();
    expect(kind(r)).toBe('deny(registry_unavailable)');
    expect(!r.allow && r.detail).toMatch(/^policy evaluation failed: /);
    expect(logger.lines).toEqual([['error', 'policy evaluation failed']]);
    expect(logger.fields).toEqual([{ err: expect.any(String) }]);
  });

  it('decides with the trust roots it was given, and with new ones once set', async () => {
    // The fixture's rows carry no root signatures: with any root configured they are not rooted.
    const roots = new Map([['a-root', newP256().spkiDer]]);
    const rooted = setup({ trustRoots: roots, listenerUp: false });
    expect(kind(await rooted.authorize())).toBe('deny(signer_not_rooted)');
    rooted.authorizer.setTrustRoots(new Map());
    expect(kind(await rooted.authorize())).toBe('allow');
    const plain = setup({ listenerUp: false });
    expect(kind(await plain.authorize())).toBe('allow');
    plain.authorizer.setTrustRoots(roots);
    expect(kind(await plain.authorize())).toBe('deny(signer_not_rooted)');
  });

  it('times every decision under its result, in seconds', async () => {
    const s = setup({ listenerUp: false });
    await s.authorize();
    s.registry.rows = [];
    await s.authorize();
    const timed = (await s.metrics.decisionSeconds.get()).values;
    const of = (result: string, what: string) =>
      timed.find(
        (v) => v.metricName === `agent_gateway_decision_seconds_${what}` && v.labels['result'] === result,
      )?.value;
    expect([of('allow', 'count'), of('deny', 'count')]).toEqual([1, 1]);
    // Two in-memory decisions take well under a second; milliseconds reported as seconds would not.
    for (const result of ['allow', 'deny']) {
      expect(of(result, 'sum')).toBeGreaterThanOrEqual(0);
      expect(of(result, 'sum')).toBeLessThan(1);
    }
  });

  it('works without metrics, cache hits included', async () => {
    const s = setup({ withMetrics: false, denialTtlMs: 1000 });
    expect(kind(await s.authorize())).toBe('allow');
    expect(kind(await s.authorize())).toBe('allow(cached)');
    const other = allowedCandidate(NOW, { destination: 'denied.example:443' });
    const denied = normalizeDestination(other.request.destination);
    expect(kind(await s.authorizer.authorize(s.peer, denied))).toBe('deny(subject_mismatch)');
    expect(kind(await s.authorizer.authorize(s.peer, denied))).toBe('deny(subject_mismatch)');
    expect(s.registry.calls).toBe(2);
  });

  // The cache key is identity + SPKI + destination: a peer that differs in either half must not be
  // served another peer's cached allow (or denial).
  const INTRUDERS = [
    ['another key claiming the same identity', { spkiDer: Buffer.from('another key') }],
    ['the same key claiming another identity', { identity: 'agent-beta' }],
  ] as const;
  it.each(INTRUDERS)('%s gets its own decision, not the cached one', async (_name, change) => {
    const s = setup({ denialTtlMs: 1000 });
    expect(kind(await s.authorize())).toBe('allow');
    expect(kind(await s.authorize())).toBe('allow(cached)');
    const intruder = { ...s.peer, ...change };
    expect(kind(await s.authorizer.authorize(intruder, s.dest))).toBe('deny(subject_mismatch)');
    expect(kind(await s.authorizer.authorize(intruder, s.dest))).toBe('deny(subject_mismatch)');
    // ...and the real peer still gets its own cached allow, not the intruder's denial.
    expect(kind(await s.authorize())).toBe('allow(cached)');
    expect(s.registry.calls).toBe(2);
  });
});
