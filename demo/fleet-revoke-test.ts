/**
 * `./demo/fleet.sh revoke-test`: open tunnels through every gateway of the fleet, revoke the agent's grant
 * on the PostgreSQL primary, and time how long each tunnel takes to end after the revoke committed
 * (docs/contract.md "Live revocation and the registry lanes": every gateway LISTENs on the primary).
 *
 *   node dist/demo/fleet-revoke-test.js --database-url URL --identity ID --destination HOST:PORT \
 *     --proxy-token-file FILE --via NAME=127.0.0.1:PORT [--via ...] [--tunnels N] [--limit-ms 1000]
 *
 * Each --via is a sidecar of the agent pointed at one gateway (NAME). Prints one line per gateway and exits
 * 1 when a tunnel did not open, did not end, or ended later than --limit-ms after the revoke.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { isMain } from './is-main.js';

type Via = { readonly name: string; readonly port: number };
type Tunnel = { readonly via: Via; readonly socket: net.Socket; ended: Promise<number> };

const GIVE_UP_MS = 10_000;

function openTunnel(via: Via, authority: string, token: string): Promise<Tunnel> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: via.port });
    let head = '';
    socket.setTimeout(30_000, () => socket.destroy(new Error(`${via.name}: no answer to CONNECT`)));
    const onData = (d: Buffer) => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      socket.off('data', onData);
      socket.setTimeout(0);
      const status = /^HTTP\/1\.1 (\d{3})/.exec(head)?.[1];
      if (status !== '200') {
        socket.destroy();
        reject(new Error(`${via.name}: CONNECT ${authority} answered ${head.split('\r\n')[0]}`));
        return;
      }
      // The moment the agent sees its tunnel gone: a reset or a close from the sidecar.
      const ended = new Promise<number>((res) => socket.once('close', () => res(performance.now())));
      socket.on('error', () => {});
      socket.resume();
      resolve({ via, socket, ended });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    const auth = Buffer.from(`agent:${token}`).toString('base64');
    socket.write(
      `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`,
    );
  });
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'database-url': { type: 'string' },
      identity: { type: 'string' },
      destination: { type: 'string' },
      'proxy-token-file': { type: 'string' },
      via: { type: 'string', multiple: true },
      tunnels: { type: 'string', default: '2' },
      'limit-ms': { type: 'string', default: '1000' },
    },
  });
  const { readFileSync } = await import('node:fs');
  const need = (k: keyof typeof values) => {
    const v = values[k];
    if (typeof v !== 'string' || v === '') throw new Error(`--${k} is required`);
    return v;
  };
  const databaseUrl = need('database-url');
  const identity = need('identity');
  const destination = need('destination');
  const token = readFileSync(need('proxy-token-file'), 'utf8').trim();
  const perGateway = Number(values.tunnels);
  const limitMs = Number(values['limit-ms']);
  const vias: Via[] = (values.via ?? []).map((v) => {
    const m = /^([^=]+)=127\.0\.0\.1:(\d+)$/.exec(v);
    if (m === null) throw new Error(`--via ${v}: NAME=127.0.0.1:PORT`);
    return { name: m[1] as string, port: Number(m[2]) };
  });
  if (vias.length === 0) throw new Error('--via is required');

  const tunnels: Tunnel[] = [];
  try {
    for (const via of vias) {
      for (let i = 0; i < perGateway; i++) tunnels.push(await openTunnel(via, destination, token));
    }
  } catch (err) {
    for (const t of tunnels) t.socket.destroy();
    process.stderr.write(`fleet revoke-test: ${(err as Error).message}\n`);
    return 1;
  }
  process.stdout.write(
    `opened ${tunnels.length} tunnels to ${destination} as ${identity} (${perGateway} through each of ${vias
      .map((v) => v.name)
      .join(', ')})\n`,
  );

  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  let revokedAt: number;
  try {
    // Autocommit: the query resolves once the revoke is committed on the primary.
    const r = await client.query(
      `UPDATE permission_registry SET revoked_at = now(), updated_at = now()
       WHERE subject_identity = $1 AND destination = $2 AND revoked_at IS NULL`,
      [identity, destination],
    );
    revokedAt = performance.now();
    process.stdout.write(
      `revoked ${r.rowCount} permission(s) of ${identity} for ${destination} on the primary\n`,
    );
  } finally {
    await client.end();
  }

  const giveUp = new Promise<number>((r) => setTimeout(() => r(Number.NaN), GIVE_UP_MS).unref());
  const endedAt = await Promise.all(tunnels.map((t) => Promise.race([t.ended, giveUp])));
  let ok = true;
  for (const via of vias) {
    const ms = tunnels
      .map((t, i) => ({ t, at: endedAt[i] as number }))
      .filter(({ t }) => t.via === via)
      .map(({ at }) => (Number.isNaN(at) ? Number.NaN : Math.max(0, at - revokedAt)));
    const worst = Math.max(...ms);
    const good = ms.every((m) => !Number.isNaN(m) && m < limitMs);
    ok &&= good;
    const list = ms.map((m) =>
      Number.isNaN(m) ? `still open after ${GIVE_UP_MS} ms` : `${m.toFixed(0)} ms`,
    );
    process.stdout.write(
      `${via.name}: ${ms.length} tunnel(s) ended after ${list.join(', ')}` +
        `${Number.isNaN(worst) ? '' : ` (max ${worst.toFixed(0)} ms)`} ${good ? 'OK' : `FAIL (limit ${limitMs} ms)`}\n`,
    );
  }
  for (const t of tunnels) t.socket.destroy();
  return ok ? 0 : 1;
}

if (isMain(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`fleet revoke-test: ${(err as Error).message}\n`);
      process.exit(1);
    },
  );
}
