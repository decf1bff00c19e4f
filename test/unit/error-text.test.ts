// core/error-text.ts: one text per error in every program (AggregateError, code prefix, cause).
import { once } from 'node:events';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { errorText } from '../../core/error-text.js';

describe('errorText', () => {
  it('is the message of a plain error, its name when the message is empty, String() of anything else', () => {
    expect(errorText(new Error('boom'))).toBe('boom');
    expect(errorText(new TypeError(''))).toBe('TypeError');
    expect(errorText('text')).toBe('text');
    expect(errorText(42)).toBe('42');
    expect(errorText(undefined)).toBe('undefined');
  });

  it('puts a code in front only when the message does not already name it', () => {
    const bare = Object.assign(new Error('permission denied'), { code: 'EACCES' });
    expect(errorText(bare)).toBe('EACCES: permission denied');
    const named = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
    expect(errorText(named)).toBe('connect ECONNREFUSED 127.0.0.1:1');
    const numeric = Object.assign(new Error('x'), { code: 7 });
    expect(errorText(numeric)).toBe('x');
  });

  it('joins the errors of an AggregateError that has no message of its own', () => {
    const agg = new AggregateError([
      new Error('connect ECONNREFUSED ::1:5'),
      new Error('connect ECONNREFUSED 127.0.0.1:5'),
    ]);
    expect(errorText(agg)).toBe('connect ECONNREFUSED ::1:5; connect ECONNREFUSED 127.0.0.1:5');
    expect(errorText(new AggregateError([]))).toBe('AggregateError');
    expect(errorText(new AggregateError([new Error('a')], 'both failed'))).toBe('both failed');
  });

  it('appends a cause once, and not when the message already carries it', () => {
    const inner = Object.assign(new Error('no such file'), { code: 'ENOENT' });
    expect(errorText(new Error('cannot start', { cause: inner }))).toBe(
      'cannot start (ENOENT: no such file)',
    );
    expect(errorText(new Error(`wrapped: ${errorText(inner)}`, { cause: inner }))).toBe(
      'wrapped: ENOENT: no such file',
    );
    expect(errorText(new Error(`wrapped: ${inner.message}`, { cause: inner }))).toBe('wrapped: no such file');
    // A cause with no message is named, not dropped because '' is in every text.
    expect(errorText(new Error('boom', { cause: new TypeError('') }))).toBe('boom (TypeError)');
  });

  it('ends on a cause chain that loops', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    Object.defineProperty(a, 'cause', { value: b });
    // Depths 0..4 in full, then the sixth level's message alone.
    expect(errorText(a)).toBe('a (b (a (b (a (b)))))');
  });

  it("names a real refused loopback connect's error the same as its code", async () => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as net.AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const socket = net.connect({ host: '127.0.0.1', port });
    const [err] = (await once(socket, 'error').catch((e: unknown) => [e])) as [Error];
    expect(errorText(err)).toBe(`connect ECONNREFUSED 127.0.0.1:${port}`);
  });
});
