// Static checks of the container set-up (this machine has no container engine): compose.yaml parses and
// has the services the demo needs, every published port is loopback-only, the gateway's compose configs
// load with the gateway's own config loader, and the Dockerfile builds a non-root image. When a compose
// CLI is installed, `compose config` must accept the file too.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { repoRoot } from '../../dev-support/repo-root.js';
import { loadConfig } from '../../gateway/config.js';

type Service = {
  image?: string;
  build?: unknown;
  entrypoint?: string[];
  command?: string[] | string;
  ports?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  networks?: Record<string, { aliases?: string[] } | null>;
  profiles?: string[];
  volumes?: string[];
  user?: string;
  restart?: string;
};

const compose = parse(readFileSync(path.join(repoRoot, 'compose.yaml'), 'utf8'), { merge: true }) as {
  name: string;
  services: Record<string, Service>;
  volumes: Record<string, unknown>;
};
const services = compose.services;

describe('compose.yaml', () => {
  it('has PostgreSQL 16, the one-shots, the gateway, both mocks and an optional collector', () => {
    expect(Object.keys(services).sort()).toEqual(
      [
        'certs',
        'docstore',
        'gateway',
        'gateway-2',
        'gateway-3',
        'haproxy',
        'messaging',
        'migrations',
        'otel-collector',
        'postgres',
        'postgres-replica',
        'roles',
      ].sort(),
    );
    expect(services['postgres']?.image).toBe('postgres:16');
    expect(services['otel-collector']?.profiles).toEqual(['otel']);
    for (const name of ['postgres', 'migrations', 'roles', 'certs', 'gateway', 'docstore', 'messaging']) {
      expect(services[name]?.profiles, name).toBeUndefined();
    }
  });

  it('has the fleet behind the fleet profile: a streaming replica, three gateways, HAProxy on /readyz', () => {
    for (const name of ['postgres-replica', 'gateway-2', 'gateway-3', 'haproxy']) {
      expect(services[name]?.profiles, name).toEqual(['fleet']);
    }
    const replica = JSON.stringify(services['postgres-replica']?.command);
    expect(replica).toContain(
      'pg_basebackup -h postgres -U postgres -D /var/lib/postgresql/data -R -X stream',
    );
    expect(services['postgres']?.volumes).toContain(
      './demo/compose/pg-replication-hba.sh:/docker-entrypoint-initdb.d/pg-replication-hba.sh:ro',
    );
    for (const name of ['gateway', 'gateway-2', 'gateway-3']) {
      expect(services[name]?.environment?.['AGENT_GATEWAY_REPLICA_DATABASE_URL'], name).toMatch(
        /^postgresql:\/\/agent_gateway_demo_gateway:[^@]+@postgres-replica:5432\/agent_gateway$/,
      );
    }
    expect(services['gateway-2']?.command).toEqual(['--config', '/etc/agent-gateway/gateway-fleet.toml']);
    expect(services['gateway-3']?.command).toEqual(['--config', '/etc/agent-gateway/gateway-fleet.toml']);
    const cfg = readFileSync(path.join(repoRoot, 'demo', 'compose', 'haproxy-fleet.cfg'), 'utf8');
    expect(cfg).toMatch(/^\s*mode tcp$/m);
    expect(cfg).toMatch(/^\s*option httpchk GET \/readyz$/m);
    const servers = [...cfg.matchAll(/^\s*server (\S+) (\S+) check port (\d+)$/gm)].map((m) => [
      m[1],
      m[2],
      m[3],
    ]);
    expect(servers).toEqual([
      ['gateway-1', 'gateway:8443', '9090'],
      ['gateway-2', 'gateway-2:8443', '9090'],
      ['gateway-3', 'gateway-3:8443', '9090'],
    ]);
  });

  it('builds one image from the Dockerfile for the gateway, migrations and mocks', () => {
    for (const name of ['migrations', 'certs', 'gateway', 'docstore', 'messaging']) {
      expect(services[name]?.image, name).toBe('agent-gateway:local');
      expect(services[name]?.build, name).toEqual({ context: '.', dockerfile: 'Dockerfile' });
    }
    expect(services['migrations']?.entrypoint).toEqual(['node', 'dist/registry-cli/cli.js']);
    expect(services['migrations']?.command).toEqual(['migrate']);
    expect(services['migrations']?.depends_on?.['postgres']?.condition).toBe('service_healthy');
    expect(services['roles']?.depends_on?.['migrations']?.condition).toBe('service_completed_successfully');
    expect(services['gateway']?.depends_on?.['roles']?.condition).toBe('service_completed_successfully');
  });

  it('serves docstore and messaging on 443 under their network aliases', () => {
    for (const name of ['docstore', 'messaging']) {
      const s = services[name];
      expect(s?.networks?.['default']?.aliases, name).toEqual([name]);
      expect(s?.entrypoint).toEqual(['node', 'dist/demo/mock-service.js']);
      expect(s?.command).toEqual([
        `--name=${name}`,
        '--listen=0.0.0.0:443',
        '--cert=/certs/mock-services.pem',
        '--key=/certs/mock-services-key.pem',
      ]);
    }
  });

  it('uses only strings where compose expects command lines', () => {
    for (const [name, s] of Object.entries(services)) {
      const raw = s as Record<string, unknown>;
      const health = (raw['healthcheck'] as { test?: unknown } | undefined)?.test;
      for (const [field, v] of [
        ['entrypoint', raw['entrypoint']],
        ['command', raw['command']],
        ['healthcheck.test', health],
      ] as const) {
        if (v === undefined) continue;
        const ok = typeof v === 'string' || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
        expect(ok, `${name}.${field}: ${JSON.stringify(v)}`).toBe(true);
      }
    }
  });

  it('publishes ports on 127.0.0.1 only', () => {
    const published = Object.entries(services).flatMap(([name, s]) => (s.ports ?? []).map((p) => [name, p]));
    expect(published.length).toBeGreaterThanOrEqual(4);
    for (const [name, p] of published) expect(p, name).toMatch(/^127\.0\.0\.1:/);
  });

  it('gives the gateway the read-only runtime role, not the superuser', () => {
    const url = services['gateway']?.environment?.['AGENT_GATEWAY_DATABASE_URL'] ?? '';
    expect(url).toMatch(/^postgresql:\/\/agent_gateway_demo_gateway:/);
    const roles = JSON.stringify(services['roles']?.command);
    expect(roles).toContain('GRANT agent_gateway_runtime TO agent_gateway_demo_gateway');
    expect(roles).toContain('GRANT agent_gateway_admin TO agent_gateway_demo_admin');
  });

  it('demo/compose/gateway-fleet.toml loads with the replica from the environment', () => {
    const cfg = loadConfig(path.join(repoRoot, 'demo', 'compose', 'gateway-fleet.toml'), {
      AGENT_GATEWAY_DATABASE_URL: 'postgresql://u:p@postgres:5432/agent_gateway',
      AGENT_GATEWAY_REPLICA_DATABASE_URL: 'postgresql://u:p@postgres-replica:5432/agent_gateway',
    });
    expect(cfg.policy.databaseUrl).toBe('postgresql://u:p@postgres:5432/agent_gateway');
    expect(cfg.policy.replicaDatabaseUrls).toEqual(['postgresql://u:p@postgres-replica:5432/agent_gateway']);
    expect(cfg.admin.listenAddr).toEqual({ host: '0.0.0.0', port: 9090 });
  });

  it.each(['gateway.toml', 'gateway-otel.toml'])(
    'demo/compose/%s loads with the gateway config loader',
    (file) => {
      const cfg = loadConfig(path.join(repoRoot, 'demo', 'compose', file), {
        AGENT_GATEWAY_DATABASE_URL: 'postgresql://u:p@postgres:5432/agent_gateway',
      });
      expect(cfg.server.listenAddr).toEqual({ host: '0.0.0.0', port: 8443 });
      expect(cfg.server.tlsCertPath).toBe('/certs/server.pem');
      expect(cfg.policy.databaseUrl).toBe('postgresql://u:p@postgres:5432/agent_gateway');
      expect(cfg.admin.listenAddr).toEqual({ host: '0.0.0.0', port: 9090 });
      if (file === 'gateway-otel.toml')
        expect(cfg.observability.otlpEndpoint).toBe('http://otel-collector:4317');
    },
  );

  const composeCli = (
    [
      ['docker', ['compose']],
      ['podman', ['compose']],
    ] as [string, string[]][]
  ).find(
    ([cmd, pre]) => spawnSync(cmd, [...pre, 'version'], { stdio: 'ignore', timeout: 20_000 }).status === 0,
  );

  // Reported as skipped where no compose CLI is installed: the checks above are then the validation.
  it.runIf(composeCli !== undefined)('is accepted by `compose config`', () => {
    const cli = composeCli as [string, string[]];
    const r = spawnSync(cli[0], [...cli[1], '-f', 'compose.yaml', 'config', '--quiet'], {
      cwd: repoRoot,
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status, r.stderr).toBe(0);
  });
});

describe('Dockerfile', () => {
  const text = readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8');
  const stages = text.split('\n').filter((l) => /^FROM /.test(l));

  it('builds on node:24-bookworm-slim (Node 24 LTS, the primary runtime) with npm ci and the project build', () => {
    expect(stages.length).toBe(2);
    for (const s of stages) expect(s).toMatch(/^FROM node:24-bookworm-slim\b/);
    expect(text).toMatch(/^RUN npm ci\b/m);
    expect(text).toMatch(/^RUN npm run build\b/m);
  });

  it('runs as a non-root user and starts the gateway', () => {
    const runtime = text.slice(text.lastIndexOf('\nFROM '));
    const user = /^USER (\S+)/m.exec(runtime)?.[1];
    expect(user).toMatch(/^[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?$|^[1-9][0-9]*(:[0-9]+)?$/);
    expect(user).not.toMatch(/^(0|root)(:|$)/);
    expect(runtime).toContain('ENTRYPOINT ["dist/gateway/main.js"]');
  });

  it('starts the entry point through its interpreter line, which carries the V8 heap flags', () => {
    const first = readFileSync(path.join(repoRoot, 'gateway', 'main.ts'), 'utf8').split('\n', 1)[0];
    expect(first).toBe('#!/usr/bin/env -S node --initial-heap-size=64 --max-semi-space-size=8');
    // ...and the build marks it executable.
    const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    expect(pkg.scripts['build']).toContain('chmod +x dist/gateway/main.js');
  });

  it('copies every folder the build compiles into the build stage', () => {
    const build = JSON.parse(readFileSync(path.join(repoRoot, 'tsconfig.build.json'), 'utf8')) as {
      include: string[];
    };
    const buildStage = text.slice(0, text.lastIndexOf('\nFROM '));
    for (const dir of build.include) expect(buildStage).toContain(`COPY ${dir}/ ${dir}/`);
  });
});
