// Shared by the root-of-trust e2e files (docs/contract.md "Root of trust"): a migrated registry, a login
// role IN ROLE agent_gateway_admin (the attacker's credential: what the registry CLI uses), a gateway with
// trust_roots set, and rooted principals with one signed grant each.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import type { ClientHttp2Session } from 'node:http2';
import pg from 'pg';
import { parse, stringify } from 'smol-toml';
import { type Carrier, createCarrier, createPrincipalKey, type PrincipalKey } from '../../dev-support/pki.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { seedPermission, seedPrincipal, seedScope, windowFromNow } from '../../dev-support/registry-seed.js';
import { rootSignChain, trustRootEntry } from '../../dev-support/root-seed.js';
import { closeSession, connectH2, type GatewayProcess, openTunnel, startGatewayProcess } from './gateway.js';
import { startEchoServer, type Upstream } from './upstreams.js';

export const DEST = 'docstore:443';

export type Principal = { keyId: string; key: PrincipalKey; agent: Carrier; permissionId: string };

export type RootedRegistry = {
  readonly dbUrl: string;
  /** Same database, logged in as a role IN ROLE agent_gateway_admin. */
  readonly adminRoleUrl: string;
  readonly admin: pg.Client;
  readonly gw: GatewayProcess;
  readonly echo: Upstream;
  /** A principal key, a scope for DEST and one signed grant to a fresh agent (not rooted yet). */
  principal(tag: string, dbUrl?: string): Promise<Principal>;
  /** principal() + key and scope root-signed by `root`. */
  rootedPrincipal(tag: string, root: PrincipalKey): Promise<Principal>;
  /** A CONNECT to DEST as the agent on a fresh session: status and deny reason. */
  connect(agent: Carrier): Promise<{ status: number; reason: string | undefined }>;
  /** Rewrite policy.trust_roots in the gateway's config file and SIGHUP it. */
  setRootsAndHup(roots: readonly PrincipalKey[] | readonly string[]): Promise<void>;
  cleanup(): Promise<void>;
};

export async function startRootedRegistry(
  superUrl: string,
  name: string,
  roots: readonly PrincipalKey[],
  policy: Record<string, unknown> = {},
): Promise<RootedRegistry> {
  const dbUrl = await createMigratedDatabase(superUrl, name);
  const role = `agw_root_${randomBytes(4).toString('hex')}`;
  const owner = new pg.Client({ connectionString: dbUrl });
  await owner.connect();
  await owner.query(`CREATE ROLE ${role} LOGIN IN ROLE agent_gateway_admin`).finally(() => owner.end());
  const u = new URL(dbUrl);
  u.username = role;
  const adminRoleUrl = u.toString();
  const admin = new pg.Client({ connectionString: adminRoleUrl });
  await admin.connect();
  const echo = await startEchoServer();
  const gw = await startGatewayProcess({
    databaseUrl: dbUrl,
    config: {
      upstream: { overrides: { [DEST]: `127.0.0.1:${echo.port}` } },
      policy: { trust_roots: roots.map(trustRootEntry), denial_cache_ttl_ms: 0, ...policy },
    },
  });
  const sessions: ClientHttp2Session[] = [];

  const principal = async (tag: string, url = dbUrl): Promise<Principal> => {
    const keyId = `org-${tag}`;
    const key = createPrincipalKey();
    const agent = await createCarrier(`agent-${tag}`);
    // One window for key and scope: windows nest (a scope within its key's window).
    const window = windowFromNow(-2, 60);
    await seedPrincipal(url, { principalId: keyId, principal: key, window });
    await seedScope(url, { principalId: keyId, destination: DEST, window });
    const permissionId = `perm-${tag}`;
    await seedPermission(url, {
      permissionId,
      principalId: keyId,
      principal: key,
      identity: agent.identity,
      subjectSpkiDer: agent.spkiDer,
      destination: DEST,
    });
    return { keyId, key, agent, permissionId };
  };

  return {
    dbUrl,
    adminRoleUrl,
    admin,
    gw,
    echo,
    principal,
    async rootedPrincipal(tag, root) {
      const p = await principal(tag);
      await rootSignChain(dbUrl, p.keyId, root);
      return p;
    },
    async connect(agent) {
      const session = await connectH2(gw.port, { ca: gw.caPem, carrier: agent });
      sessions.push(session);
      const t = await openTunnel(session, DEST);
      const reason = t.headers['agent-gateway-deny-reason'];
      if (t.status === 200) t.stream.close();
      await closeSession(session);
      return { status: t.status, reason: typeof reason === 'string' ? reason : undefined };
    },
    async setRootsAndHup(next) {
      const config = parse(await readFile(gw.configPath, 'utf8')) as Record<string, Record<string, unknown>>;
      config['policy'] = {
        ...config['policy'],
        trust_roots: next.map((r) => (typeof r === 'string' ? r : trustRootEntry(r))),
      };
      await writeFile(gw.configPath, stringify(config));
      gw.proc.child.kill('SIGHUP');
    },
    async cleanup() {
      for (const s of sessions) await closeSession(s);
      await admin.end().catch(() => {});
      await gw.cleanup();
      await echo.close();
      await dropDatabase(superUrl, dbUrl);
      const c = new pg.Client({ connectionString: superUrl });
      await c.connect();
      await c.query(`DROP ROLE IF EXISTS ${role}`).finally(() => c.end());
    },
  };
}
