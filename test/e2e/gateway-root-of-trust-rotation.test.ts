// Root rotation and the live effect of roots (docs/contract.md "Root of trust", issue #15 items 4, 5):
// roots A and B configured, re-sign with B, remove A and SIGHUP: a principal re-signed with B never sees
// a failed CONNECT, while a tunnel authorized only through A ends. Withdrawing a key's root signature ends
// its live tunnels. Real PostgreSQL, real gateway process (decision cache on, as by default).
import type { ClientHttp2Session } from 'node:http2';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { rootKeyId } from '../../core/root-signed-bytes.js';
import { createPrincipalKey } from '../../dev-support/pki.js';
import { rootSignChain } from '../../dev-support/root-seed.js';
import { closed, closeSession, connectH2, openTunnel } from '../support/gateway.js';
import { Pump } from '../support/pump.js';
import { DEST, type Principal, type RootedRegistry, startRootedRegistry } from '../support/root-of-trust.js';

const rootA = createPrincipalKey();
const rootB = createPrincipalKey();
let r: RootedRegistry;
const sessions: ClientHttp2Session[] = [];

beforeAll(async () => {
  r = await startRootedRegistry(inject('pgAdminUrl'), 'gw_root_rotation', [rootA, rootB]);
});
afterAll(async () => {
  for (const s of sessions) await closeSession(s);
  await r?.cleanup();
});

async function openFlowing(p: Principal) {
  const session = await connectH2(r.gw.port, { ca: r.gw.caPem, carrier: p.agent });
  sessions.push(session);
  const t = await openTunnel(session, DEST);
  expect(t.status).toBe(200);
  const pump = new Pump(t.stream);
  expect(await pump.flowing()).toBe(true);
  return { t, pump };
}

describe('root rotation A → B', () => {
  it('re-signed principals never fail; a tunnel authorized only through A ends after the SIGHUP', async () => {
    const alice = await r.rootedPrincipal('alice', rootA);
    const bob = await r.rootedPrincipal('bob', rootA);
    const aliceTunnel = await openFlowing(alice);
    const bobTunnel = await openFlowing(bob);

    // CONNECTs as alice all through the rotation.
    const statuses: number[] = [];
    let rotating = true;
    const loop = (async () => {
      while (rotating) statuses.push((await r.connect(alice.agent)).status);
    })();

    await rootSignChain(r.dbUrl, alice.keyId, rootB);
    await new Promise((res) => setTimeout(res, 300));
    await r.setRootsAndHup([rootB]);
    const changed = await r.gw.waitForLogs('SIGHUP: trust roots changed; re-checking every open tunnel');
    expect(changed[0]!['trust_root_ids']).toEqual([rootKeyId(rootB.spkiDer)]);

    await closed(bobTunnel.t.stream, 10_000);
    const ended = await r.gw.waitForLogs(
      'tunnel closed',
      (l) => l['permission_id'] === bob.permissionId && l['end_reason'] === 'revoked',
    );
    expect(ended).toHaveLength(1);
    await new Promise((res) => setTimeout(res, 300));
    rotating = false;
    await loop;

    expect(statuses.length).toBeGreaterThan(3);
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(await aliceTunnel.pump.flowing()).toBe(true);
    expect(await r.connect(bob.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
    expect(await r.connect(alice.agent)).toEqual({ status: 200, reason: undefined });
  });

  it('a config that does not load on SIGHUP keeps the roots in force', async () => {
    const carol = await r.rootedPrincipal('carol', rootB);
    await r.setRootsAndHup(['not base64 at all!']);
    const kept = await r.gw.waitForLogs('SIGHUP: config does not load; keeping the trust roots in force');
    expect(String(kept[0]!['err'])).toContain('policy.trust_roots[0]');
    expect(await r.connect(carol.agent)).toEqual({ status: 200, reason: undefined });
    await r.setRootsAndHup([rootB]);
    await r.gw.waitForLogs('SIGHUP: trust roots unchanged');
  });

  it('removing every root on SIGHUP is a warning, not an info line', async () => {
    await r.setRootsAndHup([]);
    const removed = await r.gw.waitForLogs(
      'SIGHUP: trust roots removed; the registry is trusted as stored again (anyone who can write it can grant)',
    );
    expect(removed[0]!['level']).toBe('warn');
    expect(removed[0]!['trust_roots_enabled']).toBe(false);
    const before = r.gw.logs('SIGHUP: trust roots changed; re-checking every open tunnel').length;
    await r.setRootsAndHup([rootB]);
    await expect
      .poll(() => r.gw.logs('SIGHUP: trust roots changed; re-checking every open tunnel').length)
      .toBe(before + 1);
  });
});

describe('withdrawing a root signature', () => {
  it("clearing a key's root signature ends its live tunnels", async () => {
    const dave = await r.rootedPrincipal('dave', rootB);
    const tunnel = await openFlowing(dave);
    await r.admin.query(
      'UPDATE principal_signing_keys SET root_key_id = NULL, root_signature = NULL WHERE key_id = $1',
      [dave.keyId],
    );
    await closed(tunnel.t.stream, 10_000);
    await r.gw.waitForLogs(
      'tunnel closed',
      (l) => l['permission_id'] === dave.permissionId && l['end_reason'] === 'revoked',
    );
    expect(await r.connect(dave.agent)).toEqual({ status: 403, reason: 'signer_not_rooted' });
  });
});
