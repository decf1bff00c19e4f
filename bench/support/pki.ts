/**
 * Throwaway TLS material for one bench run: a bench CA, a server certificate for the proxies
 * (localhost / 127.0.0.1), one for the TLS sink (SINK_NAME), and CA-issued carrier certificates.
 */
import { type Carrier, createTestCa, type PemPair } from '../../dev-support/pki.js';

export const SINK_NAME = 'sink.bench.internal';

export type BenchPki = {
  readonly caPem: string;
  readonly server: PemPair;
  readonly sink: PemPair;
  /** Software-key carrier certificate for `identity`, issued by the bench CA. */
  carrier(identity: string): Promise<Carrier>;
};

export async function createPki(): Promise<BenchPki> {
  const ca = await createTestCa('agent_gateway bench CA');
  return {
    caPem: ca.certPem,
    server: await ca.serverCert(),
    sink: await ca.serverCert({ cn: SINK_NAME, names: [SINK_NAME] }),
    carrier: ca.carrier,
  };
}
