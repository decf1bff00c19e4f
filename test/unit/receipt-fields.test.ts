// docs/contract.md "Receipts": decodeReceipt refuses a line whose keys are right but whose values are not
// what a gateway writes (core/receipt-fields.ts), naming the field.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeReceipt, encodeReceipt, type Receipt } from '../../core/receipt-format.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { chainLines, testKey, tunnelFields } from './fixtures/receipts.js';

const key = testKey();
const [tunnel, checkpoint] = chainLines([tunnelFields(1), 'checkpoint'], key).map(decodeReceipt) as [
  Receipt,
  Receipt,
];

/** Encode a record with one field replaced (encodeReceipt does not judge values). */
const withField = (r: Receipt, name: string, value: unknown) =>
  encodeReceipt({ ...r, [name]: value } as unknown as Receipt);

describe('receipt field values', () => {
  it('well-formed records decode', () => {
    expect(decodeReceipt(encodeReceipt(tunnel)).kind).toBe('tunnel');
    expect(decodeReceipt(encodeReceipt(checkpoint)).kind).toBe('checkpoint');
  });

  it.each([
    ['gateway', 'gw/../../etc', /gateway is not an instance id/],
    ['opened', '2026-03-01 10:00:00', /opened is not a timestamp/],
    ['closed', '2026-02-31T10:00:00.000000Z', /closed is not a timestamp/],
    ['bytes_up', '100', /bytes_up is not a non-negative integer/],
    ['bytes_down', -1, /bytes_down is not a non-negative integer/],
    ['duration_us', 1.5, /duration_us is not a non-negative integer/],
    ['decision', 'maybe', /decision is not one of allow, observe, deny/],
    ['dialled', '127.0.0.1:443', /dialled is not a list of strings/],
    ['source_spki_sha256', 'ABC', /source_spki_sha256 is not a lowercase hex SHA-256 or null/],
    ['trace_id', 'x', /trace_id is not a W3C trace id/],
    ['permission_id', null, /an allow without permission_id/],
    ['source_identity', 7, /source_identity is not a string or null/],
  ])('tunnel %s = %j is refused', (name, value, message) => {
    expect(() => decodeReceipt(withField(tunnel, name, value))).toThrow(message);
  });

  it('padded base64 of every length decodes', () => {
    for (const sig of ['MEUCIQ==', 'MEUCIQA=', 'MEUCIQAB', Buffer.from('x'.repeat(71)).toString('base64')])
      expect(decodeReceipt(withField(checkpoint, 'sig', sig)).kind).toBe('checkpoint');
  });

  it('a deny needs its reason', () => {
    const deny = { ...tunnel, decision: 'deny', deny_reason: null } as unknown as Receipt;
    expect(() => decodeReceipt(encodeReceipt(deny))).toThrow(/a deny without deny_reason/);
  });

  it.each([
    ['cause', 'whim', /cause is not one of count, interval, rotate, stop/],
    ['key_id', 'k1', /key_id is not a lowercase hex SHA-256/],
    ['sig', 'not base64!', /sig is not base64/],
    // Base64 comes in whole 4-character groups, `=` only to pad the last one.
    ['sig', 'MEUCIQ', /sig is not base64/],
    ['sig', 'MEUCIQ=', /sig is not base64/],
    ['sig', 'MEUCIQ===', /sig is not base64/],
    ['sig', 'ME=UCIQ=', /sig is not base64/],
    ['sig', '', /sig is not base64/],
    ['at', null, /at is not a timestamp/],
  ])('checkpoint %s = %j is refused', (name, value, message) => {
    expect(() => decodeReceipt(withField(checkpoint, name, value))).toThrow(message);
  });

  it('gap values', () => {
    const gap = {
      v: 1,
      kind: 'gap',
      gateway: 'gw-1',
      seq: 3,
      at: '2026-03-01T10:00:00.000000Z',
      reason: 'torn_line',
      lost_receipts: null,
      lost_bytes: 17,
      detail: 'set aside',
      prev: '0'.repeat(64),
    } as const;
    expect(decodeReceipt(encodeReceipt(gap)).kind).toBe('gap');
    expect(() => decodeReceipt(withField(gap, 'reason', 'oops'))).toThrow(/reason is not one of/);
    expect(() => decodeReceipt(withField(gap, 'lost_receipts', -2))).toThrow(/lost_receipts is not/);
    // docs/contract.md: lost_receipts is a non-negative integer (a dropped count) or null.
    expect(decodeReceipt(withField(gap, 'lost_receipts', 5)).kind).toBe('gap');
    expect(() => decodeReceipt(withField(gap, 'lost_receipts', 1.5))).toThrow(/lost_receipts is not/);
    const contract = readFileSync(path.join(repoRoot, 'docs', 'contract.md'), 'utf8');
    expect(contract).toContain('`lost_receipts` a non-negative integer or null');
  });
});
