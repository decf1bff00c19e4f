/**
 * What the sidecar writes to an agent that is not getting a tunnel: a complete HTTP/1.1 response that
 * closes the connection. A gateway denial keeps the gateway's status and, when the gateway sent them, its
 * `agent-gateway-deny-reason` and `agent-gateway-request-id` headers; with a request id the body tells the
 * agent (often an AI agent reading curl's output) to ask a human rather than work around the proxy
 * (docs/contract.md "Sidecar").
 */
import http from 'node:http';
import type http2 from 'node:http2';
import {
  ACCESS_REQUEST_ID_PATTERN,
  DENY_REASON_HEADER,
  REQUEST_ID_HEADER,
} from '../core/access-request-id.js';
import { tryNormalizeDestination } from '../core/destination.js';

// Only values of the gateway's own shapes are passed on: the reason is one of a closed set of snake_case
// names, the id is `req-` + 20 hex digits (docs/contract.md "Access requests"). Anything else is dropped
// rather than copied into a response the agent parses.
const DENY_REASON = /^[a-z][a-z0-9_]{0,63}$/;

export function plainResponse(status: number, body: string, extra: Record<string, string> = {}): string {
  const reason = http.STATUS_CODES[status] ?? 'Unknown';
  const headers = {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': String(Buffer.byteLength(body)),
    Connection: 'close',
    ...extra,
  };
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`);
  return `HTTP/1.1 ${status} ${reason}\r\n${lines.join('')}\r\n${body}`;
}

/** What a gateway denial said about itself, each value only when it has the gateway's shape. */
export type GatewayDenial = { readonly reason?: string; readonly requestId?: string };

export function readGatewayDenial(headers: http2.IncomingHttpHeaders): GatewayDenial {
  const reason = single(headers[DENY_REASON_HEADER], DENY_REASON);
  const requestId = single(headers[REQUEST_ID_HEADER], ACCESS_REQUEST_ID_PATTERN);
  return {
    ...(reason === undefined ? {} : { reason }),
    ...(requestId === undefined ? {} : { requestId }),
  };
}

/** The agent's answer to a CONNECT to `authority` that the gateway answered with `status` (not 200). */
export function gatewayDenialResponse(status: number, authority: string, denial: GatewayDenial): string {
  const extra: Record<string, string> = {};
  if (denial.reason !== undefined) extra[DENY_REASON_HEADER] = denial.reason;
  if (denial.requestId === undefined) return plainResponse(status, 'gateway denied request', extra);
  extra[REQUEST_ID_HEADER] = denial.requestId;
  // The destination as the registry row names it, so the line matches what a principal sees in `requests`.
  const destination = tryNormalizeDestination(authority)?.normalized ?? authority;
  return plainResponse(
    status,
    `access to ${destination} requested as ${denial.requestId}; ask a principal to approve it\n`,
    extra,
  );
}

function single(value: string | string[] | undefined, shape: RegExp): string | undefined {
  return typeof value === 'string' && shape.test(value) ? value : undefined;
}
