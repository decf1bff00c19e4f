// The sidecar's gateway list (docs/contract.md "Sidecar"): order kept, a name with several addresses
// counting as several, certificates checked against the name, an unresolvable name skipped.
import { describe, expect, it } from 'vitest';
import { resolveGateways } from '../../sidecar/gateway-endpoints.js';

const table: Record<string, string[]> = {
  'gw.fleet': ['127.0.0.2', '127.0.0.3', '127.0.0.2'],
  'one.fleet': ['127.0.0.9'],
};
const resolve = async (name: string) => {
  const found = table[name];
  if (found === undefined) throw new Error(`ENOTFOUND ${name}`);
  return found;
};

describe('sidecar gateway endpoints', () => {
  it('expands names into their addresses, in order, and checks certificates against the name', async () => {
    const unresolved: string[] = [];
    const list = await resolveGateways(
      [
        { host: '127.0.0.1', port: 8443 },
        { host: 'gw.fleet', port: 9443 },
        { host: 'nowhere.fleet', port: 1 },
        { host: 'one.fleet', port: 7443 },
      ],
      undefined,
      (g) => unresolved.push(g),
      resolve,
    );
    expect(list).toEqual([
      { host: '127.0.0.1', port: 8443, servername: undefined, label: '127.0.0.1:8443' },
      { host: '127.0.0.2', port: 9443, servername: 'gw.fleet', label: 'gw.fleet:9443 (127.0.0.2)' },
      { host: '127.0.0.3', port: 9443, servername: 'gw.fleet', label: 'gw.fleet:9443 (127.0.0.3)' },
      { host: '127.0.0.9', port: 7443, servername: 'one.fleet', label: 'one.fleet:7443' },
    ]);
    expect(unresolved).toEqual(['nowhere.fleet:1']);
  });

  it('uses --gateway-name for every gateway when given', async () => {
    const list = await resolveGateways(
      [
        { host: '127.0.0.1', port: 1 },
        { host: 'one.fleet', port: 2 },
      ],
      'gateway.internal',
      () => {},
      resolve,
    );
    expect(list.map((e) => e.servername)).toEqual(['gateway.internal', 'gateway.internal']);
  });

  it('fails only when no gateway resolves', async () => {
    await expect(
      resolveGateways([{ host: 'nowhere.fleet', port: 1 }], undefined, () => {}, resolve),
    ).rejects.toThrow(/no --gateway address resolves: .*ENOTFOUND nowhere.fleet/);
  });
});
