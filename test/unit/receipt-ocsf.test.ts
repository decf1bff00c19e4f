// docs/contract.md "Receipts", OCSF mapping (core/receipt-ocsf.ts): an allowed tunnel and a denied CONNECT
// as OCSF 1.3.0 Network Activity events, field by field.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TunnelReceipt } from '../../core/receipt-format.js';
import { receiptToOcsf } from '../../core/receipt-ocsf.js';
import { repoRoot } from '../../dev-support/repo-root.js';
import { tunnelFields } from './fixtures/receipts.js';

const allow: TunnelReceipt = {
  ...tunnelFields(3),
  gateway: 'gw-1',
  seq: 42,
  prev: 'e'.repeat(64),
  opened: '2026-03-01T10:00:00.250000Z',
  closed: '2026-03-01T10:00:02.750400Z',
  peer_addr: '[::1]:50123',
  destination: 'docstore:8443',
  dialled: ['10.0.0.9:8443', '127.0.0.1:8443'],
  duration_us: 2_500_400,
  trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
};

describe('receipt → OCSF Network Activity', () => {
  it('an allowed tunnel is a Close, Allowed, with its endpoints, traffic and grant', () => {
    const e = receiptToOcsf(allow);
    expect(e).toMatchObject({
      class_uid: 4001,
      category_uid: 4,
      activity_id: 2,
      type_uid: 400102,
      severity_id: 1,
      time: Date.parse('2026-03-01T10:00:02.750Z'),
      start_time: Date.parse('2026-03-01T10:00:00.250Z'),
      end_time: Date.parse('2026-03-01T10:00:02.750Z'),
      duration: 2500,
      disposition_id: 1,
      disposition: 'Allowed',
      status_id: 1,
      actor: { user: { name: 'agent-alpha' } },
      src_endpoint: { ip: '::1', port: 50123 },
      dst_endpoint: { hostname: 'docstore', port: 8443, ip: '127.0.0.1' },
      traffic: { bytes_out: 103, bytes_in: 2003, bytes: 2106 },
      connection_info: { protocol_name: 'tcp' },
      metadata: {
        version: '1.3.0',
        product: { name: 'agent_gateway', vendor_name: 'agent_gateway' },
        uid: 'gw-1:42',
        correlation_uid: '4bf92f3577b34da6a3ce929d0e0e4736',
      },
      unmapped: {
        permission_id: 'perm-3',
        permission_sha256: 'b'.repeat(64),
        signing_key_id: 'org-alice',
        end_reason: 'closed',
        prev: 'e'.repeat(64),
      },
    });
    expect(e).not.toHaveProperty('status_detail');
  });

  it('a denied CONNECT is an Open, Blocked, with the deny reason; nulls are left out', () => {
    const e = receiptToOcsf({
      ...allow,
      decision: 'deny',
      deny_reason: 'no_permission',
      source_identity: null,
      dialled: [],
      permission_id: null,
      permission_sha256: null,
      permission_signature: null,
      signing_key_id: null,
      end_reason: null,
      trace_id: null,
    });
    expect(e).toMatchObject({
      activity_id: 1,
      activity_name: 'Open',
      type_uid: 400101,
      disposition_id: 2,
      disposition: 'Blocked',
      status_id: 2,
      status_detail: 'no_permission',
      dst_endpoint: { hostname: 'docstore', port: 8443 },
    });
    expect(e).not.toHaveProperty('actor');
    expect(e['dst_endpoint']).not.toHaveProperty('ip');
    expect(e['unmapped']).not.toHaveProperty('permission_id');
    expect(e['metadata']).not.toHaveProperty('correlation_uid');
  });

  it('a deny with no destination and nothing dialled has no dst_endpoint rather than an empty one', () => {
    const e = receiptToOcsf({
      ...allow,
      decision: 'deny',
      deny_reason: 'bad_authority',
      authority: 'not a host',
      destination: null,
      dialled: [],
    });
    expect(e).not.toHaveProperty('dst_endpoint');
    expect(e['unmapped']).toMatchObject({ authority: 'not a host' });
  });

  it('every attribute it writes is in the mapping table of docs/contract.md', () => {
    const contract = readFileSync(path.join(repoRoot, 'docs', 'contract.md'), 'utf8');
    const section = contract.slice(contract.indexOf('### OCSF export'));
    const rows = section
      .slice(0, section.indexOf('\n### '))
      .split('\n')
      .filter((l) => l.startsWith('| `'))
      .map((l) => l.split(' | '));
    // A leaf is named by its path in the first column (`a.b`, or `.b` after a sibling `a.x`), or by its
    // name in the second column of the row of one of its parents (`metadata.product` | `name` …).
    const named = (p: string) => {
      const parts = p.split('.');
      const leaf = parts.at(-1)!;
      const parent = parts.slice(0, -1).join('.');
      return rows.some(([attr = '', value = '']) => {
        if (attr.includes(`\`${p}\``)) return true;
        if (parent !== '' && attr.includes(`\`${parent}.`) && attr.includes(`\`.${leaf}\``)) return true;
        return parts
          .slice(0, -1)
          .some(
            (_, i) =>
              attr.includes(`| \`${parts.slice(0, i + 1).join('.')}\``) && value.includes(`\`${leaf}\``),
          );
      });
    };
    const leaves = (o: Record<string, unknown>, at: string): string[] =>
      Object.entries(o).flatMap(([k, v]) =>
        v !== null && typeof v === 'object' && !Array.isArray(v) && k !== 'unmapped'
          ? leaves(v as Record<string, unknown>, `${at}${k}.`)
          : [`${at}${k}`],
      );
    const all = leaves(receiptToOcsf(allow), '');
    expect(all).toContain('connection_info.direction');
    expect(all.filter((p) => !named(p))).toEqual([]);
  });
});
