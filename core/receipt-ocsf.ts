/**
 * A tunnel receipt as an OCSF 1.3.0 Network Activity event (class 4001), for SIEMs
 * (`receipts export --format ocsf`; the field table is docs/contract.md "Receipts", OCSF mapping).
 * A tunnel that ran is a Close (the receipt is written when it ends), allowed; a denied CONNECT is an
 * Open that was blocked. Attributes whose value is null are left out, as OCSF producers do; what has no
 * OCSF attribute goes under `unmapped` with its receipt name.
 */
import { parseHostPort } from './host-port.js';
import type { TunnelReceipt } from './receipt-format.js';
import { microsToMs, parseTimestamp } from './timestamp.js';

export const OCSF_VERSION = '1.3.0';
const NETWORK_ACTIVITY = 4001;
const NETWORK_ACTIVITY_CATEGORY = 4;
const ACTIVITY = { open: 1, close: 2 } as const;
const DISPOSITION = { allowed: 1, blocked: 2 } as const;
const STATUS = { success: 1, failure: 2 } as const;

export type OcsfEvent = Record<string, unknown>;

export function receiptToOcsf(r: TunnelReceipt): OcsfEvent {
  const denied = r.decision === 'deny';
  const activityId = denied ? ACTIVITY.open : ACTIVITY.close;
  const activityName = denied ? 'Open' : 'Close';
  const opened = microsToMs(parseTimestamp(r.opened));
  const closed = microsToMs(parseTimestamp(r.closed));
  const src = parseHostPort(r.peer_addr, { allowPortZero: true });
  const dst = r.destination === null ? null : parseHostPort(r.destination);
  const lastDialled = r.dialled.at(-1);
  const dialled = lastDialled === undefined ? null : parseHostPort(lastDialled);
  const dstEndpoint = compact({
    hostname: dst?.ok ? dst.value.host : null,
    port: dst?.ok ? dst.value.port : null,
    ip: dialled?.ok ? dialled.value.host : null,
  });
  return compact({
    class_uid: NETWORK_ACTIVITY,
    class_name: 'Network Activity',
    category_uid: NETWORK_ACTIVITY_CATEGORY,
    category_name: 'Network Activity',
    activity_id: activityId,
    activity_name: activityName,
    type_uid: NETWORK_ACTIVITY * 100 + activityId,
    type_name: `Network Activity: ${activityName}`,
    severity_id: 1,
    severity: 'Informational',
    time: closed,
    start_time: opened,
    end_time: closed,
    duration: Math.round(r.duration_us / 1000),
    disposition_id: denied ? DISPOSITION.blocked : DISPOSITION.allowed,
    disposition: denied ? 'Blocked' : 'Allowed',
    status_id: denied ? STATUS.failure : STATUS.success,
    status: denied ? 'Failure' : 'Success',
    status_detail: r.deny_reason,
    actor: r.source_identity === null ? null : { user: { name: r.source_identity } },
    src_endpoint: src.ok ? { ip: src.value.host, port: src.value.port } : null,
    // A deny whose authority did not normalize has no destination: no endpoint rather than an empty one.
    dst_endpoint: Object.keys(dstEndpoint).length === 0 ? null : dstEndpoint,
    traffic: { bytes_out: r.bytes_up, bytes_in: r.bytes_down, bytes: r.bytes_up + r.bytes_down },
    connection_info: { protocol_name: 'tcp', direction_id: 2, direction: 'Outbound' },
    metadata: compact({
      version: OCSF_VERSION,
      product: { name: 'agent_gateway', vendor_name: 'agent_gateway' },
      uid: `${r.gateway}:${r.seq}`,
      correlation_uid: r.trace_id,
      original_time: r.closed,
    }),
    unmapped: compact({
      gateway: r.gateway,
      seq: r.seq,
      decision: r.decision,
      deny_reason: r.deny_reason,
      authority: r.authority,
      destination: r.destination,
      dialled: r.dialled,
      source_spki_sha256: r.source_spki_sha256,
      permission_id: r.permission_id,
      permission_sha256: r.permission_sha256,
      permission_signature: r.permission_signature,
      signing_key_id: r.signing_key_id,
      end_reason: r.end_reason,
      end_detail: r.end_detail,
      opened: r.opened,
      closed: r.closed,
      duration_us: r.duration_us,
      prev: r.prev,
    }),
  });
}

function compact(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== undefined));
}
