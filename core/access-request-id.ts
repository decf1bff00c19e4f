/**
 * The id of an access request (docs/contract.md "Access requests"): a pure function of what the row is
 * unique on, so the gateway can name the request in its 403 without a database round trip, and the row
 * it later writes has that same id as its primary key. The gateway, the registry CLI and the tests all
 * call this one function.
 */
import { createHash } from 'node:crypto';

/** First registry schema version with the access_requests table (migrations/0007). */
export const ACCESS_REQUESTS_SCHEMA_VERSION = 7;

/** What a request id looks like; the table's CHECK holds the same pattern. */
export const ACCESS_REQUEST_ID_PATTERN = /^req-[0-9a-f]{20}$/;

const ID_HEX_CHARS = 20;

/**
 * `req-` + the first 20 lowercase hex characters of SHA-256(identity "\n" hex(spkiDer) "\n" destination).
 * `destination` must already be normalized (core/destination.ts): the id names the normalized form, as
 * the row does. The SPKI goes in as hex so that no identity or destination text can run into its bytes.
 */
export function accessRequestId(identity: string, spkiDer: Uint8Array, destination: string): string {
  const digest = createHash('sha256')
    .update(identity, 'utf8')
    .update('\n')
    .update(Buffer.from(spkiDer.buffer, spkiDer.byteOffset, spkiDer.byteLength).toString('hex'))
    .update('\n')
    .update(destination, 'utf8')
    .digest('hex');
  return `req-${digest.slice(0, ID_HEX_CHARS)}`;
}

export function isAccessRequestId(text: string): boolean {
  return ACCESS_REQUEST_ID_PATTERN.test(text);
}

/** Header carrying the deny reason (closed set, never the detail) so a client can tell denials apart. */
export const DENY_REASON_HEADER = 'agent-gateway-deny-reason';
/** Header naming the access request a denial recorded (docs/contract.md "Access requests"). */
export const REQUEST_ID_HEADER = 'agent-gateway-request-id';
