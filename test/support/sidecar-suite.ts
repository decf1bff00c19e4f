// The sidecar end-to-end set-up (sidecar-startup.test.ts, sidecar-tunnels.test.ts): a real swtpm (behind
// tpm2-abrmd) holding the key made by the real provisioning CLI, a real PostgreSQL registry with a signed
// grant, the real gateway process, an HTTPS destination with its own CA, and a tiny OTLP/gRPC receiver that
// records what both processes export. Needs `npm run build` (dist/sidecar/main.js, dist/gateway/main.js).
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { expect } from 'vitest';
import { createPrincipalKey } from '../../dev-support/pki.js';
import { freePort } from '../../dev-support/ports.js';
import { createMigratedDatabase, dropDatabase } from '../../dev-support/postgres.js';
import { grant } from '../../dev-support/registry-seed.js';
import type { TpmHandle } from '../../dev-support/swtpm.js';
import { GATEWAY_MAIN, type GatewayProcess, makeTempDir, startGatewayProcess } from './gateway.js';
import type { ManagedProcess } from './processes.js';
import {
  type Destination,
  SIDECAR_MAIN,
  type SidecarKey,
  startHttpsDestination,
  startSidecarTpm,
} from './sidecar.js';

export type OtlpReceiver = { port: number; requests: Buffer[]; close(): Promise<void> };

/**
 * The OTLP trace service as raw bytes: enough to prove a span with a given trace id (16 raw bytes in the
 * protobuf) and name reached the collector, without decoding protobuf.
 */
async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const requests: Buffer[] = [];
  const server = new grpc.Server();
  const raw = (b: Buffer) => b;
  server.addService(
    {
      Export: {
        path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
        requestStream: false,
        responseStream: false,
        requestSerialize: raw,
        requestDeserialize: raw,
        responseSerialize: raw,
        responseDeserialize: raw,
      },
    },
    {
      Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
        requests.push(call.request);
        callback(null, Buffer.alloc(0));
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { port, requests, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) };
}

export type SidecarSuite = {
  readonly dir: string;
  readonly key: SidecarKey;
  readonly tpm: TpmHandle;
  readonly gw: GatewayProcess;
  readonly destination: Destination;
  readonly otlp: OtlpReceiver;
  /** The provisioned key's SubjectPublicKeyInfo, as the signed grant names it. */
  readonly spkiDer: Buffer;
  /** Where sidecarArgs() has the sidecar listen. */
  readonly sidecarPort: number;
  sidecarArgs(overrides?: Record<string, string>): string[];
  spawnSidecar(args: string[], env?: Record<string, string | undefined>): ManagedProcess;
  stop(): Promise<void>;
};

/**
 * Everything above, with the key provisioned for `identity` and granted the destination. What a failed
 * set-up had started is stopped before the error is thrown.
 */
export async function startSidecarSuite(
  adminUrl: string,
  dbName: string,
  identity: string,
): Promise<SidecarSuite> {
  for (const f of [SIDECAR_MAIN, GATEWAY_MAIN]) {
    if (!existsSync(f)) throw new Error(`${f} missing: run \`npm run build\` first`);
  }
  const undo: (() => Promise<unknown>)[] = [];
  const stop = async () => {
    for (const f of undo.splice(0).reverse()) await f();
  };
  try {
    const dir = await makeTempDir('agw-sidecar-e2e-');
    undo.push(() => rm(dir, { recursive: true, force: true }));
    const [key, otlp, destination] = await Promise.all([
      startSidecarTpm(dir, identity),
      startOtlpReceiver(),
      startHttpsDestination(dir),
    ]);
    const tpm = key.tpm;
    undo.push(
      () => tpm.stop(),
      () => Promise.all([destination.close(), otlp.close()]),
    );

    const made = await key.provision();
    expect(made.code, made.stderr + made.stdout).toBe(0);
    const spkiDer = await readFile(key.spkiPath);

    const dbUrl = await createMigratedDatabase(adminUrl, dbName);
    undo.push(() => dropDatabase(adminUrl, dbUrl).catch(() => {}));
    await grant(dbUrl, {
      principalId: 'org-sidecar-e2e',
      principal: createPrincipalKey(),
      identity,
      subjectSpkiDer: spkiDer,
      destination: `localhost:${destination.port}`,
    });

    const gw = await startGatewayProcess({
      databaseUrl: dbUrl,
      config: { observability: { log_level: 'info', otlp_endpoint: `http://127.0.0.1:${otlp.port}` } },
      env: { OTEL_BSP_SCHEDULE_DELAY: '200' },
    });
    undo.push(() => gw.cleanup());
    await writeFile(path.join(dir, 'gateway-ca.pem'), gw.caPem);
    const sidecarPort = await freePort();

    return {
      dir,
      key,
      tpm,
      gw,
      destination,
      otlp,
      spkiDer,
      sidecarPort,
      sidecarArgs: (overrides = {}) =>
        key.runArgs(
          { port: gw.port, caPath: path.join(dir, 'gateway-ca.pem') },
          { '--listen': `127.0.0.1:${sidecarPort}`, ...overrides },
        ),
      spawnSidecar: (args, env = {}) => key.spawn(args, env),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
