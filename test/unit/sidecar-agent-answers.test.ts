// What the sidecar writes to an agent the gateway denied (sidecar/agent-answers.ts): the gateway's reason and
// request id pass through only in the gateway's own shapes, and the body says what to do when there is a
// request. The end-to-end pass-through from the real gateway is in test/e2e/sidecar-tunnels.test.ts.
import { describe, expect, it } from 'vitest';
import { gatewayDenialResponse, readGatewayDenial } from '../../sidecar/agent-answers.js';

const ID = 'req-0123456789abcdef0123';

function parse(response: string) {
  const split = response.indexOf('\r\n\r\n');
  const [statusLine, ...headerLines] = response.slice(0, split).split('\r\n');
  const headers = Object.fromEntries(headerLines.map((l) => l.split(': ', 2) as [string, string]));
  return { statusLine, headers, body: response.slice(split + 4) };
}

describe('sidecar answer to a gateway denial', () => {
  it('passes both headers and names the normalized destination and the request id in one body line', () => {
    const denial = readGatewayDenial({
      'agent-gateway-deny-reason': 'no_permission',
      'agent-gateway-request-id': ID,
    });
    expect(denial).toEqual({ reason: 'no_permission', requestId: ID });
    const r = parse(gatewayDenialResponse(403, 'DocStore:0443', denial));
    expect(r.statusLine).toBe('HTTP/1.1 403 Forbidden');
    expect(r.headers).toMatchObject({
      'agent-gateway-deny-reason': 'no_permission',
      'agent-gateway-request-id': ID,
      Connection: 'close',
      'Content-Length': String(Buffer.byteLength(r.body)),
    });
    expect(r.body).toBe(`access to docstore:443 requested as ${ID}; ask a principal to approve it\n`);
  });

  it('without a request id keeps the body "gateway denied request" and still passes the reason', () => {
    const r = parse(
      gatewayDenialResponse(
        403,
        'docstore:443',
        readGatewayDenial({ 'agent-gateway-deny-reason': 'signer_revoked' }),
      ),
    );
    expect(r.headers['agent-gateway-deny-reason']).toBe('signer_revoked');
    expect(r.headers['agent-gateway-request-id']).toBeUndefined();
    expect(r.body).toBe('gateway denied request');
    expect(parse(gatewayDenialResponse(503, 'docstore:443', readGatewayDenial({}))).body).toBe(
      'gateway denied request',
    );
  });

  it('drops values that are not in the gateway shapes rather than copying them to the agent', () => {
    expect(
      readGatewayDenial({
        'agent-gateway-deny-reason': 'No Permission; x=1',
        'agent-gateway-request-id': `${ID}0`,
      }),
    ).toEqual({});
    expect(readGatewayDenial({ 'agent-gateway-request-id': ID.toUpperCase().replace('REQ', 'req') })).toEqual(
      {},
    );
    expect(
      readGatewayDenial({ 'agent-gateway-deny-reason': ['no_permission', 'x'] as unknown as string }),
    ).toEqual({});
  });
});
