/**
 * A tunnel receipt from what the gateway already holds when a tunnel ends or a CONNECT is denied
 * (docs/contract.md "Receipts"): the decision line's fields, the grant, the addresses dialled, the
 * tunnel's counts. Built once, at the end; nothing is kept per tunnel but its open time.
 */
import { createHash } from 'node:crypto';
import type { PeerIdentity } from '../../core/identity-extension.js';
import { RECEIPT_FORMAT_VERSION, type TunnelReceipt, type Unchained } from '../../core/receipt-format.js';
import type { DecisionFields } from '../active-tunnel.js';
import type { DenyReason, Grant } from '../authorization.js';
import type { TunnelEndReason } from '../tunnel.js';
import { formatMicros, receiptMicros } from './receipt-time.js';

/** SPKI DER → its hex SHA-256; one certificate's buffer is shared by all its CONNECTs. */
const spkiDigests = new WeakMap<Buffer, string>();

export function spkiSha256(spkiDer: Buffer): string {
  let digest = spkiDigests.get(spkiDer);
  if (digest === undefined) {
    digest = createHash('sha256').update(spkiDer).digest('hex');
    spkiDigests.set(spkiDer, digest);
  }
  return digest;
}

/** What a tunnel knows when it ends. */
export type EndedTunnel = {
  readonly fields: DecisionFields;
  readonly grant: Grant;
  readonly dialled: readonly string[];
  /** receiptMicros() when the 200 went out. */
  readonly openedMicros: number;
  readonly bytesUp: number;
  readonly bytesDown: number;
  readonly endReason: TunnelEndReason;
  readonly endDetail: string | undefined;
};

export function tunnelReceipt(t: EndedTunnel): Unchained<TunnelReceipt> {
  const closed = receiptMicros();
  const g = t.grant;
  const observed = g.observedDenyReason !== undefined;
  return {
    v: RECEIPT_FORMAT_VERSION,
    kind: 'tunnel',
    opened: formatMicros(t.openedMicros),
    closed: formatMicros(closed),
    source_identity: g.identity,
    source_spki_sha256: spkiSha256(g.spkiDer),
    peer_addr: t.fields.source_peer_addr,
    authority: t.fields.dest_authority,
    destination: t.fields.destination ?? null,
    dialled: t.dialled,
    decision: observed ? 'observe' : 'allow',
    deny_reason: null,
    permission_id: observed ? null : g.permissionId,
    permission_sha256: observed ? null : g.permissionSha256,
    permission_signature: observed ? null : g.permissionSignature,
    signing_key_id: observed ? null : g.signingKeyId,
    bytes_up: t.bytesUp,
    bytes_down: t.bytesDown,
    duration_us: Math.max(0, closed - t.openedMicros),
    end_reason: t.endReason,
    end_detail: t.endDetail ?? null,
    trace_id: t.fields.trace_id ?? null,
  };
}

/** A denied CONNECT: opened and closed are the moment of the answer; `detail` goes in end_detail. */
export function deniedReceipt(
  fields: DecisionFields,
  peer: PeerIdentity | undefined,
  reason: DenyReason,
  detail: string,
): Unchained<TunnelReceipt> {
  const at = formatMicros(receiptMicros());
  return {
    v: RECEIPT_FORMAT_VERSION,
    kind: 'tunnel',
    opened: at,
    closed: at,
    source_identity: fields.source_identity,
    source_spki_sha256: peer === undefined ? null : spkiSha256(peer.spkiDer),
    peer_addr: fields.source_peer_addr,
    authority: fields.dest_authority,
    destination: fields.destination ?? null,
    dialled: [],
    decision: 'deny',
    deny_reason: reason,
    permission_id: null,
    permission_sha256: null,
    permission_signature: null,
    signing_key_id: null,
    bytes_up: 0,
    bytes_down: 0,
    duration_us: 0,
    end_reason: null,
    end_detail: detail,
    trace_id: fields.trace_id ?? null,
  };
}
