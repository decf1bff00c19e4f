// docs/contract.md "Receipts", test vectors: a tunnel record's canonical line and its SHA-256, and a
// checkpoint's signed bytes and a signature made once with the contract's test key. If an encoder change
// moves one byte, these fail and the contract must change with it.
import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { verifyDerSignature } from '../../core/ecdsa.js';
import {
  type CheckpointReceipt,
  checkpointSignedBytes,
  decodeReceipt,
  encodeReceipt,
  GENESIS_PREV,
  receiptHash,
  type TunnelReceipt,
} from '../../core/receipt-format.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { testKey } from './fixtures/receipts.js';

const TUNNEL: TunnelReceipt = {
  v: 1,
  kind: 'tunnel',
  gateway: 'gw-1',
  seq: 1,
  opened: '2026-03-01T10:00:00.123456Z',
  closed: '2026-03-01T10:00:02.654321Z',
  source_identity: 'agent-alpha',
  source_spki_sha256: '5f0e4a3b7c1d2e9f8a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f',
  peer_addr: '127.0.0.1:50123',
  authority: 'docstore:443',
  destination: 'docstore:443',
  dialled: ['127.0.0.1:8443'],
  decision: 'allow',
  deny_reason: null,
  permission_id: 'perm-1',
  permission_sha256: '0c8a4f5e6d7b8c9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a',
  permission_signature: 'MEUCIQDx',
  signing_key_id: 'org-alice',
  bytes_up: 517,
  bytes_down: 4096,
  duration_us: 2530865,
  end_reason: 'closed',
  end_detail: null,
  trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
  prev: GENESIS_PREV,
};

const TUNNEL_LINE =
  '{"v":1,"kind":"tunnel","gateway":"gw-1","seq":1,"opened":"2026-03-01T10:00:00.123456Z","closed":"2026-03-01T10:00:02.654321Z","source_identity":"agent-alpha","source_spki_sha256":"5f0e4a3b7c1d2e9f8a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f","peer_addr":"127.0.0.1:50123","authority":"docstore:443","destination":"docstore:443","dialled":["127.0.0.1:8443"],"decision":"allow","deny_reason":null,"permission_id":"perm-1","permission_sha256":"0c8a4f5e6d7b8c9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a","permission_signature":"MEUCIQDx","signing_key_id":"org-alice","bytes_up":517,"bytes_down":4096,"duration_us":2530865,"end_reason":"closed","end_detail":null,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","prev":"0000000000000000000000000000000000000000000000000000000000000000"}';
const TUNNEL_SHA256 = 'd3b25e2142bd3746f94629fe476ce0a9d0f25bcfcf315d03f16cbe0c1c4dcaba';
const KEY_ID = '3322fca49b1a17c4f507084821dec1c4f426f50374fc0f51abcd6b1cee2468fc';
const CHECKPOINT: Omit<CheckpointReceipt, 'sig'> = {
  v: 1,
  kind: 'checkpoint',
  gateway: 'gw-1',
  seq: 2,
  at: '2026-03-01T10:00:03.000000Z',
  cause: 'stop',
  key_id: KEY_ID,
  prev: TUNNEL_SHA256,
};
const CHECKPOINT_SIGNED =
  '{"v":1,"kind":"checkpoint","gateway":"gw-1","seq":2,"at":"2026-03-01T10:00:03.000000Z","cause":"stop","key_id":"3322fca49b1a17c4f507084821dec1c4f426f50374fc0f51abcd6b1cee2468fc","prev":"d3b25e2142bd3746f94629fe476ce0a9d0f25bcfcf315d03f16cbe0c1c4dcaba"}';
// Made once with the contract's test key (ECDSA signatures are randomized: a new one differs but verifies).
const CHECKPOINT_SIG =
  'MEYCIQCsAjEA6PYe+O3aUEBAsSdVTnLHJwQXnw2+2+fq0H8YpwIhALJBiXNn+Strc8JJ28d89hAiprxlHhP1G6T+YDQ8P9kO';
const PUBLIC_KEY_PEM = `-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEl+cchWWg1JWdKn/ltLrQGhABmjYa
5YjbLsSDsT/jWXAL3COLJlYWqXuNzCKiwvFvRYclGMIZhxZiFUHg/PzuaQ==
-----END PUBLIC KEY-----`;

describe('receipt test vectors (docs/contract.md "Receipts")', () => {
  it('a tunnel record encodes to the fixed line, and its hash is the next prev', () => {
    expect(encodeReceipt(TUNNEL)).toBe(TUNNEL_LINE);
    expect(receiptHash(TUNNEL_LINE)).toBe(TUNNEL_SHA256);
    expect(decodeReceipt(TUNNEL_LINE)).toEqual(TUNNEL);
  });

  it("a checkpoint's signed bytes are its line without sig, and the fixed signature verifies", () => {
    expect(testKey().keyId).toBe(KEY_ID);
    const signed = checkpointSignedBytes(CHECKPOINT);
    expect(signed.toString('utf8')).toBe(CHECKPOINT_SIGNED);
    const key = createPublicKey(PUBLIC_KEY_PEM);
    expect(verifyDerSignature(key, signed, Buffer.from(CHECKPOINT_SIG, 'base64'))).toBe(true);
    const line = encodeReceipt({ ...CHECKPOINT, sig: CHECKPOINT_SIG });
    expect(line).toBe(`${CHECKPOINT_SIGNED.slice(0, -1)},"sig":"${CHECKPOINT_SIG}"}`);
    // One byte more in the signed part and the same signature no longer verifies.
    const other = checkpointSignedBytes({ ...CHECKPOINT, seq: 3 });
    expect(verifyDerSignature(key, other, Buffer.from(CHECKPOINT_SIG, 'base64'))).toBe(false);
  });

  it('docs/contract.md carries these exact vectors', () => {
    const contract = readFileSync(path.join(repoRoot, 'docs', 'contract.md'), 'utf8');
    for (const v of [TUNNEL_LINE, TUNNEL_SHA256, CHECKPOINT_SIGNED, CHECKPOINT_SIG, KEY_ID, PUBLIC_KEY_PEM])
      expect(contract).toContain(v);
  });
});
