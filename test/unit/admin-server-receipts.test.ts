// /readyz with receipts (docs/contract.md "Receipts", Failure): 503 with a receipts check naming the
// error while receipts refuse new CONNECTs, 200 again once they are written; no receipts check at all
// when receipts are off.
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../gateway/admin-server.js';
import { createGatewayMetrics } from '../../gateway/metrics.js';

const servers: AdminServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

function readyz(port: number): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/readyz' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(body) }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function start(receiptsRefusing: (() => string | undefined) | undefined): Promise<number> {
  const server = await startAdminServer({
    listenAddr: { host: '127.0.0.1', port: 0 },
    metrics: createGatewayMetrics({ defaultMetrics: false }),
    pingRegistry: async () => ({ ok: true, version: 8 }),
    isAccepting: () => true,
    isDraining: () => false,
    receiptsRefusing,
  });
  servers.push(server);
  return server.address.port;
}

describe('/readyz and receipts', () => {
  it('is 503 naming the receipts error while receipts refuse CONNECTs, and 200 once they are written', async () => {
    let refusing: string | undefined =
      "EACCES: permission denied, open '/srv/receipts/gw/receipts-000000000001.jsonl'";
    const port = await start(() => refusing);
    const failing = await readyz(port);
    expect(failing.status).toBe(503);
    expect(failing.body['failing']).toEqual(['receipts']);
    expect(failing.body['checks']).toMatchObject({ receipts: { ok: false, detail: refusing } });
    refusing = undefined;
    const ready = await readyz(port);
    expect(ready.status).toBe(200);
    expect(ready.body['checks']).toMatchObject({ receipts: { ok: true } });
  });

  it('has no receipts check when receipts are off', async () => {
    const port = await start(undefined);
    const ready = await readyz(port);
    expect(ready.status).toBe(200);
    expect(Object.keys(ready.body['checks'] as object)).not.toContain('receipts');
  });
});
