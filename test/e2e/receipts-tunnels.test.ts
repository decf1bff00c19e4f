// Tunnel receipts on the real gateway (issue #17 "Tests"; docs/contract.md "Receipts"): 100 CONNECTs —
// allowed tunnels with known byte counts each way, denied CONNECTs (include_denied), tunnels revoked
// while moving bytes and tunnels the destination resets — then a clean stop. The chain on disk is checked
// here on its own (seq, prev, signatures) and by `agent_gateway_registry receipts verify` against the live
// registry and against a `registry dump`; every receipt's fields are compared with what the test did.
import { rm } from 'node:fs/promises';
import type { ClientHttp2Session } from 'node:http2';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { TunnelReceipt } from '../../core/receipt-format.js';
import { type Carrier, createCarrier, createPrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant, revokePermission } from '../../dev-support/registry-seed.js';
import {
  closed,
  closeSession,
  connectH2,
  type GatewayProcess,
  makeTempDir,
  openTunnel,
  roundTrip,
  startGatewayProcess,
} from '../support/gateway.js';
import { Pump } from '../support/pump.js';
import {
  type Chain,
  chainProblems,
  micros,
  type PermissionRow,
  permissionRow,
  type ReceiptKey,
  readChain,
  receiptsSection,
  registryCommand,
  sha256Hex,
  shown,
  TIMESTAMP,
  tamperedCopy,
  verifyCommand,
  writeReceiptKey,
} from '../support/receipts.js';
import {
  startEchoServer,
  startHalfCloseServer,
  startResetServer,
  type Upstream,
} from '../support/upstreams.js';

const GATEWAY_ID = 'gw-receipts-e2e';
const HALF_CLOSE = 60;
const ECHO = 10;
const NO_GRANT = 10;
const NO_CERT = 5;
const BAD_AUTHORITY = 5;
const REVOKED = 5;
const RESET = 5;

type Expected = {
  readonly decision: 'allow' | 'deny';
  readonly authority: string;
  readonly destination: string | null;
  readonly peerAddr: string;
  readonly bytesUp: number;
  readonly bytesDown: number;
  readonly denyReason?: string;
  readonly upstream?: Upstream;
  readonly permission?: string;
};

describe('tunnel receipts: 100 CONNECTs through the real gateway, then receipts verify', () => {
  const adminUrl = inject('pgAdminUrl');
  let dbUrl: string;
  let dir: string;
  let receiptsPath: string;
  let key: ReceiptKey;
  let gw: GatewayProcess;
  let echo: Upstream;
  let halfClose: Upstream;
  let resets: Upstream;
  let alpha: Carrier;
  let session: ClientHttp2Session;
  const sessions: ClientHttp2Session[] = [];
  const perms: Record<string, string> = {};
  /** Allowed tunnels by their unique bytes_up; denies by their unique authority. */
  const allowed = new Map<number, Expected>();
  const denied = new Map<string, Expected>();
  let started: number;
  let chain: Chain;

  const peerOf = (s: ClientHttp2Session) => `127.0.0.1:${s.socket.localPort}`;

  beforeAll(async () => {
    started = Date.now();
    dbUrl = await createMigratedDatabase(adminUrl, 'receipts_tunnels');
    [echo, halfClose, resets] = await Promise.all([
      startEchoServer(),
      startHalfCloseServer(),
      startResetServer(),
    ]);
    alpha = await createCarrier('agent-alpha');
    const alice = createPrincipalKey();
    for (const destination of ['halfclose.test:443', 'docstore:443', 'revoked.test:443', 'resets.test:443']) {
      perms[destination] = await grant(dbUrl, {
        principalId: 'org-alice',
        principal: alice,
        identity: alpha.identity,
        subjectSpkiDer: alpha.spkiDer,
        destination,
      });
    }
    dir = await makeTempDir('agw-receipts-');
    receiptsPath = `${dir}/receipts`;
    key = await writeReceiptKey(dir);
    gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: {
        receipts: receiptsSection(receiptsPath, key.keyPath, GATEWAY_ID, { include_denied: true }),
        policy: { revocation_recheck_interval_ms: 500 },
        upstream: {
          overrides: {
            'halfclose.test:443': `127.0.0.1:${halfClose.port}`,
            'docstore:443': `127.0.0.1:${echo.port}`,
            'revoked.test:443': `127.0.0.1:${echo.port}`,
            'resets.test:443': `127.0.0.1:${resets.port}`,
          },
        },
      },
    });
    session = await connectH2(gw.port, { ca: gw.caPem, carrier: alpha });
    sessions.push(session);
  });

  afterAll(async () => {
    for (const s of sessions) await closeSession(s);
    await gw?.cleanup();
    await Promise.all([echo?.close(), halfClose?.close(), resets?.close()]);
    if (dbUrl) await dropDatabase(adminUrl, dbUrl);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it(`${HALF_CLOSE + ECHO} allowed tunnels move their bytes each way`, async () => {
    // bytes_up differs per tunnel so each receipt can be matched to its tunnel; the half-close
    // destination answers a line of another length, so swapped directions would show.
    const halfCloseTunnel = async (n: number) => {
      const t = await openTunnel(session, 'halfclose.test:443');
      expect(t.status, String(t.headers['agent-gateway-deny-reason'])).toBe(200);
      t.stream.end(Buffer.alloc(n, 0x61));
      const answer = await t.body();
      expect(answer.toString()).toMatch(new RegExp(`^received ${n} bytes [0-9a-f]{64}\\n$`));
      await closed(t.stream);
      allowed.set(n, {
        decision: 'allow',
        authority: 'halfclose.test:443',
        destination: 'halfclose.test:443',
        peerAddr: peerOf(session),
        bytesUp: n,
        bytesDown: answer.length,
        upstream: halfClose,
        permission: perms['halfclose.test:443']!,
      });
    };
    for (let batch = 0; batch < HALF_CLOSE; batch += 10) {
      await Promise.all(Array.from({ length: 10 }, (_, i) => halfCloseTunnel(1000 + batch + i)));
    }
    for (let i = 0; i < ECHO; i++) {
      const n = 5000 + i;
      const t = await openTunnel(session, 'docstore');
      expect(t.status).toBe(200);
      expect((await roundTrip(t.stream, Buffer.alloc(n, 0x62))).length).toBe(n);
      t.stream.end();
      t.stream.resume();
      await closed(t.stream);
      allowed.set(n, {
        decision: 'allow',
        authority: 'docstore',
        destination: 'docstore:443',
        peerAddr: peerOf(session),
        bytesUp: n,
        bytesDown: n,
        upstream: echo,
        permission: perms['docstore:443']!,
      });
    }
  });

  it(`${NO_GRANT + NO_CERT + BAD_AUTHORITY} denied CONNECTs`, async () => {
    const deny = async (
      s: ClientHttp2Session,
      authority: string,
      destination: string | null,
      status: number,
    ) => {
      const t = await openTunnel(s, authority);
      expect(t.status).toBe(status);
      const reason = String(t.headers['agent-gateway-deny-reason']);
      await t.body();
      denied.set(authority, {
        decision: 'deny',
        authority,
        destination,
        peerAddr: peerOf(s),
        bytesUp: 0,
        bytesDown: 0,
        denyReason: reason,
      });
      return reason;
    };
    for (let i = 0; i < NO_GRANT; i++) {
      expect(await deny(session, `nogrant-${i}.test:443`, `nogrant-${i}.test:443`, 403)).toBe(
        'no_permission',
      );
    }
    // The gateway ends a connection that proved no identity after its refusal: one connection each.
    for (let i = 0; i < NO_CERT; i++) {
      const anonymous = await connectH2(gw.port, { ca: gw.caPem });
      sessions.push(anonymous);
      const reason = await deny(anonymous, `anon-${i}.test:443`, `anon-${i}.test:443`, 403);
      expect(reason).toBe('missing_client_certificate');
    }
    for (let i = 0; i < BAD_AUTHORITY; i++) {
      expect(await deny(session, `docstore:${70000 + i}`, null, 400)).toBe('invalid_authority');
    }
  });

  it(`${REVOKED} tunnels revoked while moving bytes and ${RESET} reset by the destination`, async () => {
    const pumps: Pump[] = [];
    for (let i = 0; i < REVOKED; i++) {
      const t = await openTunnel(session, 'revoked.test:443');
      expect(t.status).toBe(200);
      const p = new Pump(t.stream);
      expect(await p.flowing(100)).toBe(true);
      pumps.push(p);
    }
    await revokePermission(dbUrl, perms['revoked.test:443']!);
    for (const p of pumps) await closed(p.stream, 5000);
    for (let i = 0; i < RESET; i++) {
      const t = await openTunnel(session, 'resets.test:443');
      expect(t.status).toBe(200);
      t.stream.on('error', () => {});
      t.stream.write(Buffer.alloc(100, 0x63));
      await closed(t.stream, 5000);
    }
  });

  it('a clean stop ends the chain in a signed stop checkpoint that vouches for all 100', async () => {
    for (const x of sessions.splice(0)) await closeSession(x);
    expect(await gw.stop()).toBe(0);
    chain = await readChain(receiptsPath, GATEWAY_ID);
    expect(chainProblems(chain, GATEWAY_ID, key.publicKey, key.keyId)).toEqual([]);
    expect(chain.gaps).toEqual([]);
    expect(chain.receipts.at(-1)).toMatchObject({ kind: 'checkpoint', cause: 'stop' });
    expect(chain.tunnels.length).toBe(100);
  });

  it('receipts verify exits 0 against the registry and against a registry dump', async () => {
    const live = await verifyCommand(chain.files, key.publicPath, ['--registry', dbUrl]);
    expect(live.code, shown(live)).toBe(0);
    const dumpPath = `${dir}/registry-dump.json`;
    const dump = await registryCommand(['registry', 'dump', '--out', dumpPath], {
      AGENT_GATEWAY_DATABASE_URL: dbUrl,
    });
    expect(dump.code, shown(dump)).toBe(0);
    const offline = await verifyCommand(chain.files, key.publicPath, ['--registry-dump', dumpPath]);
    expect(offline.code, shown(offline)).toBe(0);
  });

  it('each allowed and denied receipt says what happened', async () => {
    const rows = new Map<string, PermissionRow>();
    for (const p of Object.values(perms)) rows.set(p, await permissionRow(dbUrl, p));
    const alphaSpki = sha256Hex(alpha.spkiDer);
    const byUp = new Map<number, TunnelReceipt>();
    for (const r of chain.tunnels) {
      expect(r.opened).toMatch(TIMESTAMP);
      expect(r.closed).toMatch(TIMESTAMP);
      expect(micros(r.opened, r.closed)).toBeGreaterThanOrEqual(0);
      expect(Date.parse(r.opened)).toBeGreaterThanOrEqual(started - 1000);
      expect(Date.parse(r.closed)).toBeLessThanOrEqual(Date.now());
      expect(r.trace_id === null || /^[0-9a-f]{32}$/.test(r.trace_id), String(r.trace_id)).toBe(true);
      if (r.decision === 'allow' && r.end_reason === 'closed') byUp.set(r.bytes_up, r);
    }

    for (const [up, want] of allowed) {
      const r = byUp.get(up);
      expect(r, `no receipt with bytes_up ${up}`).toBeDefined();
      const row = rows.get(want.permission!)!;
      expect(r).toMatchObject({
        source_identity: 'agent-alpha',
        source_spki_sha256: alphaSpki,
        peer_addr: want.peerAddr,
        authority: want.authority,
        destination: want.destination,
        dialled: [`127.0.0.1:${want.upstream!.port}`],
        decision: 'allow',
        deny_reason: null,
        permission_id: want.permission,
        permission_sha256: row.sha256,
        permission_signature: row.signature,
        signing_key_id: 'org-alice',
        bytes_up: want.bytesUp,
        bytes_down: want.bytesDown,
        end_reason: 'closed',
      });
      // duration_us is measured, opened/closed are wall-clock: they agree to well within a second.
      expect(Math.abs(r!.duration_us - micros(r!.opened, r!.closed))).toBeLessThan(100_000);
    }

    const denies = chain.tunnels.filter((r) => r.decision === 'deny');
    expect(denies.length).toBe(denied.size);
    for (const r of denies) {
      const want = denied.get(r.authority);
      expect(want, `unexpected deny receipt for ${r.authority}`).toBeDefined();
      const proven = want!.denyReason === 'no_permission' || want!.denyReason === 'invalid_authority';
      expect(r).toMatchObject({
        source_identity: proven ? 'agent-alpha' : null,
        source_spki_sha256: proven ? alphaSpki : null,
        peer_addr: want!.peerAddr,
        destination: want!.destination,
        dialled: [],
        deny_reason: want!.denyReason,
        permission_id: null,
        permission_sha256: null,
        permission_signature: null,
        signing_key_id: null,
        bytes_up: 0,
        bytes_down: 0,
        end_reason: null,
      });
    }
  });

  it('revoked and reset tunnels carry their end reason, grant and bytes', async () => {
    const revokedRow = await permissionRow(dbUrl, perms['revoked.test:443']!);
    const revoked = chain.tunnels.filter((r) => r.destination === 'revoked.test:443');
    expect(revoked.length).toBe(REVOKED);
    for (const r of revoked) {
      expect(r).toMatchObject({
        decision: 'allow',
        permission_id: perms['revoked.test:443'],
        permission_sha256: revokedRow.sha256,
        dialled: [`127.0.0.1:${echo.port}`],
        end_reason: 'revoked',
      });
      // The revoking change: the re-check's denial and the registry change that caused it.
      expect(r.end_detail).toMatch(/^(no_permission|permission_revoked): /);
      expect(r.end_detail).toContain(
        `(registry change: permission_registry UPDATE permission_id=${perms['revoked.test:443']} signing_key_id=org-alice)`,
      );
      expect(r.bytes_up).toBeGreaterThan(0);
      expect(r.bytes_down).toBeGreaterThan(0);
      expect(r.bytes_down).toBeLessThanOrEqual(r.bytes_up);
    }
    const reset = chain.tunnels.filter((r) => r.destination === 'resets.test:443');
    expect(reset.length).toBe(RESET);
    for (const r of reset) {
      expect(r).toMatchObject({
        decision: 'allow',
        permission_id: perms['resets.test:443'],
        dialled: [`127.0.0.1:${resets.port}`],
        bytes_up: 100,
        bytes_down: 0,
        end_reason: 'upstream_reset',
      });
    }
  });

  it('an edited, a deleted and a swapped line each make verify fail and name the record', async () => {
    for (const how of ['edit', 'delete', 'swap'] as const) {
      const copy = await tamperedCopy(chain, dir, how);
      const r = await verifyCommand(copy.files, key.publicPath);
      expect(r.code, `${how}: ${shown(r)}`).not.toBe(0);
      const said = `${r.stdout}${r.stderr}`;
      expect(
        copy.seqs.some((s) => new RegExp(`\\b${s}\\b`).test(said)),
        `${how}: ${shown(r)}`,
      ).toBe(true);
    }
  });
});
