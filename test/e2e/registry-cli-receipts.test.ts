// receipts verify / show / export and registry dump end to end (docs/contract.md "Receipts"): grants signed
// by the real CLI with a key in a real swtpm into a real PostgreSQL; receipt files written with the real
// encoder and signed with a real P-256 receipt key; verify against --registry and against a dump; a
// revocation after the tunnel opened still holds, one before it does not; a permission row changed behind
// the registry's guard and a receipt naming no row are named failures.
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { canonicalPermissionBytes } from '../../core/permission-bytes.js';
import {
  type CheckpointReceipt,
  checkpointSignedBytes,
  encodeReceipt,
  GENESIS_PREV,
  type Receipt,
  receiptHash,
  type TunnelReceipt,
} from '../../core/receipt-format.js';
import { spkiToPem } from '../../core/spki-input.js';
import { formatTimestamp, parseTimestamp } from '../../core/timestamp.js';
import {
  agentSpki,
  db,
  expectExit,
  registryCliSuite,
  seedGrants,
  ts,
  work,
} from '../support/registry-cli-suite.js';

registryCliSuite('registry_cli_receipts', { migrated: true });

const receiptKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const receiptSpki = receiptKey.publicKey.export({ type: 'spki', format: 'der' });
const keyId = createHash('sha256').update(receiptSpki).digest('hex');
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

type Row = {
  permission_id: string;
  signing_key_id: string;
  subject_identity: string;
  destination: string;
  nb: string;
  na: string;
  signature: Buffer;
};

async function permissionRow(id: string): Promise<Row> {
  const r = await db.query<Row>(
    `SELECT permission_id, signing_key_id, subject_identity, destination, ${ts('not_before')} AS nb,
            ${ts('not_after')} AS na, signature FROM permission_registry WHERE permission_id = $1`,
    [id],
  );
  return r.rows[0]!;
}

/** The allow receipt the gateway writes for a tunnel on `row`, opened at `opened`. */
function allowReceipt(row: Row, opened: string): Omit<TunnelReceipt, 'seq' | 'prev' | 'gateway'> {
  const bytes = canonicalPermissionBytes({
    permissionId: row.permission_id,
    signingKeyId: row.signing_key_id,
    subjectIdentity: row.subject_identity,
    subjectSpkiDer: agentSpki,
    destination: row.destination,
    notBefore: parseTimestamp(row.nb),
    notAfter: parseTimestamp(row.na),
  });
  return {
    v: 1,
    kind: 'tunnel',
    opened,
    closed: formatTimestamp(parseTimestamp(opened) + 2_000_000n),
    source_identity: row.subject_identity,
    source_spki_sha256: sha256(agentSpki),
    peer_addr: '127.0.0.1:41000',
    authority: row.destination,
    destination: row.destination,
    dialled: ['127.0.0.1:443'],
    decision: 'allow',
    deny_reason: null,
    permission_id: row.permission_id,
    permission_sha256: sha256(bytes),
    permission_signature: row.signature.toString('base64'),
    signing_key_id: row.signing_key_id,
    bytes_up: 311,
    bytes_down: 5120,
    duration_us: 2_000_000,
    end_reason: 'closed',
    end_detail: null,
    trace_id: null,
  };
}

/** Chain, checkpoint (cause `end`; none: no checkpoint) and write one receipt file; returns its path. */
function writeReceipts(
  name: string,
  records: Omit<TunnelReceipt, 'seq' | 'prev' | 'gateway'>[],
  end: 'stop' | 'count' | 'none' = 'stop',
): string {
  const gateway = 'gw-e2e';
  let prev = GENESIS_PREV;
  const lines: string[] = [];
  const push = (r: Receipt) => {
    const line = encodeReceipt(r);
    lines.push(line);
    prev = receiptHash(line);
  };
  const pushCheckpoint = (cause: 'stop' | 'count') => {
    const cp: Omit<CheckpointReceipt, 'sig'> = {
      v: 1,
      kind: 'checkpoint',
      gateway,
      seq: records.length + 1,
      at: records.at(-1)!.closed,
      cause,
      key_id: keyId,
      prev,
    };
    const sig = sign('sha256', checkpointSignedBytes(cp), { key: receiptKey.privateKey, dsaEncoding: 'der' });
    push({ ...cp, sig: sig.toString('base64') });
  };
  for (const [i, r] of records.entries()) push({ ...r, gateway, seq: i + 1, prev });
  if (end !== 'none') pushCheckpoint(end);
  const dir = path.join(work, 'receipts', name, gateway);
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'receipts-000000000001.jsonl');
  writeFileSync(file, lines.length === 0 ? '' : `${lines.join('\n')}\n`);
  return file;
}

describe('receipts verify against the registry', () => {
  let alpha: Row;
  let keyPem: string;
  let opened: string;

  beforeAll(async () => {
    const { alphaPermission } = await seedGrants();
    alpha = await permissionRow(alphaPermission);
    keyPem = path.join(work, 'receipts.pub.pem');
    writeFileSync(keyPem, spkiToPem(receiptSpki));
    const now = await db.query<{ now: string }>(`SELECT ${ts('now()')} AS now`);
    opened = now.rows[0]!.now;
  });

  it('a receipt of a granted tunnel holds against --registry and against a dump', async () => {
    const deny = {
      ...allowReceipt(alpha, opened),
      decision: 'deny' as const,
      deny_reason: 'no_permission',
      permission_id: null,
      permission_sha256: null,
      permission_signature: null,
      signing_key_id: null,
      dialled: [],
      end_reason: null,
      bytes_up: 0,
      bytes_down: 0,
      duration_us: 0,
    };
    const file = writeReceipts('good', [allowReceipt(alpha, opened), deny]);
    const live = await expectExit(0, ['receipts', 'verify', file, '--gateway-key', keyPem, '--registry']);
    expect(live.stdout).toMatch(
      /note: permissions checked against the registry as of \S+ \(schema \d+\), no trust roots/,
    );
    expect(live.stdout.trimEnd().split('\n').at(-1)).toBe('3 receipts in 1 chain: ok');

    const dump = path.join(work, 'dump.json');
    await expectExit(0, ['registry', 'dump', '--out', dump]);
    const parsed = JSON.parse(readFileSync(dump, 'utf8')) as {
      format: string;
      permission_registry: { permission_id: string; signature: string; not_before: string }[];
    };
    expect(parsed.format).toBe('agent-gateway-registry-dump-v1');
    const dumped = parsed.permission_registry.find((p) => p.permission_id === alpha.permission_id)!;
    expect(dumped.signature).toBe(alpha.signature.toString('hex'));
    expect(dumped.not_before).toBe(alpha.nb);
    const offline = await expectExit(0, [
      'receipts',
      'verify',
      file,
      '--gateway-key',
      keyPem,
      '--registry-dump',
      dump,
    ]);
    expect(offline.stdout.trimEnd().split('\n').at(-1)).toBe('3 receipts in 1 chain: ok');

    const show = await expectExit(0, ['receipts', 'show', file, '--identity', 'agent-alpha']);
    expect(show.stdout).toMatch(/agent-alpha\s+docstore:443\s+allow\s+311\/5120\s+2\.000s\s+closed/);
    expect(show.stdout).toMatch(/deny \(no_permission\)/);
    const exported = await expectExit(0, ['receipts', 'export', file, '--format', 'ocsf']);
    const events = exported.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events.map((e) => [e['class_uid'], e['type_uid'], e['disposition_id']])).toEqual([
      [4001, 400102, 1],
      [4001, 400101, 2],
    ]);
  });

  it('a signed row changed behind the guard: permission_mismatch; an unknown permission: permission_missing', async () => {
    const file = writeReceipts('tampered', [
      allowReceipt(alpha, opened),
      { ...allowReceipt(alpha, opened), permission_id: 'perm-never-granted' },
    ]);
    await db.query('ALTER TABLE permission_registry DISABLE TRIGGER permission_registry_guard');
    try {
      await db.query(
        `UPDATE permission_registry SET not_after = not_after + interval '300 days' WHERE permission_id = $1`,
        [alpha.permission_id],
      );
    } finally {
      await db.query('ALTER TABLE permission_registry ENABLE ALWAYS TRIGGER permission_registry_guard');
    }
    try {
      const r = await expectExit(1, ['receipts', 'verify', file, '--gateway-key', keyPem, '--registry']);
      const rel = file;
      expect(r.stdout).toContain(
        `${rel}:1 seq 1: permission_mismatch: permission ${alpha.permission_id} in the registry differs from the receipt: the sha256 of its canonical bytes`,
      );
      expect(r.stdout).toContain(
        `${rel}:2 seq 2: permission_missing: permission perm-never-granted is not in the registry`,
      );
      expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('3 receipts in 1 chain: 2 problems');
    } finally {
      await db.query('ALTER TABLE permission_registry DISABLE TRIGGER permission_registry_guard');
      await db.query(`UPDATE permission_registry SET not_after = $2::timestamptz WHERE permission_id = $1`, [
        alpha.permission_id,
        alpha.na,
      ]);
      await db.query('ALTER TABLE permission_registry ENABLE ALWAYS TRIGGER permission_registry_guard');
    }
  });

  it('revoked after the tunnel opened: still holds; a tunnel opened after the revocation: not_authorized_then', async () => {
    await expectExit(0, [
      'agent-permissions',
      'delete',
      'agent-alpha',
      agentSpki.toString('hex'),
      '--destination',
      'docstore',
    ]);
    const revoked = await db.query<{ at: string }>(
      `SELECT ${ts('revoked_at')} AS at FROM permission_registry WHERE permission_id = $1`,
      [alpha.permission_id],
    );
    const after = formatTimestamp(parseTimestamp(revoked.rows[0]!.at) + 1_000_000n);
    const file = writeReceipts('revoked', [allowReceipt(alpha, opened), allowReceipt(alpha, after)]);
    const r = await expectExit(1, ['receipts', 'verify', file, '--gateway-key', keyPem, '--registry']);
    expect(r.stdout).not.toMatch(/:1 seq 1:/);
    expect(r.stdout).toMatch(
      new RegExp(
        `:2 seq 2: not_authorized_then: permission_revoked: permission ${alpha.permission_id} revoked at `,
      ),
    );
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('3 receipts in 1 chain: 1 problem');
  });

  it('a receipt file edited after the fact, and another receipt key: named, exit 1', async () => {
    const file = writeReceipts('edited', [allowReceipt(alpha, opened), allowReceipt(alpha, opened)]);
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.replace('"bytes_down":5120', '"bytes_down":5121'));
    const r = await expectExit(1, ['receipts', 'verify', file, '--gateway-key', keyPem]);
    expect(r.stdout).toMatch(/:2 seq 2: chain_break: prev [0-9a-f]{12}… is not the hash of \S+:1 \(seq 1\)/);
    const otherPem = path.join(work, 'other.pub.pem');
    writeFileSync(
      otherPem,
      spkiToPem(
        generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }),
      ),
    );
    const wrongKey = await expectExit(1, ['receipts', 'verify', file, '--gateway-key', otherPem]);
    expect(wrongKey.stdout).toMatch(
      /:3 seq 3: unknown_key: checkpoint signed by key_id [0-9a-f]{64}, not the given key/,
    );
  });

  it('whole chains only: an emptied file, a forged chain, a slice and an open end fail unless allowed', async () => {
    const last = (r: { stdout: string }) => r.stdout.trimEnd().split('\n').at(-1);
    // Every file truncated to 0 bytes: nothing verified is not "ok".
    const emptied = writeReceipts('emptied', [allowReceipt(alpha, opened)]);
    writeFileSync(emptied, '');
    const empty = await expectExit(1, ['receipts', 'verify', emptied, '--gateway-key', keyPem]);
    expect(empty.stdout).toContain(`${emptied}: empty_file: the file holds no record`);
    expect(empty.stdout).toMatch(/^no_records: no receipt record in the 1 file\(s\) given/m);
    expect(last(empty)).toBe('0 receipts in 0 chains: 2 problems');

    // Records no checkpoint covers are no open tail: --allow-open-tail does not accept them.
    const forged = writeReceipts(
      'forged',
      [allowReceipt(alpha, opened), allowReceipt(alpha, opened)],
      'none',
    );
    const f = await expectExit(1, [
      'receipts',
      'verify',
      forged,
      '--gateway-key',
      keyPem,
      '--allow-open-tail',
    ]);
    expect(f.stdout).toContain(
      ':1 seq 1: unsigned: no valid checkpoint in the chain (--allow-open-tail accepts only records after one)',
    );
    expect(f.stdout).not.toContain('accepted');
    expect(last(f)).toBe('2 receipts in 1 chain: 2 problems');

    // The last two lines of a chain alone: open_head, accepted by --allow-open-head naming seq 2.
    const whole = writeReceipts('sliced', [allowReceipt(alpha, opened), allowReceipt(alpha, opened)]);
    const slice = path.join(path.dirname(whole), 'receipts-000000000002.jsonl');
    writeFileSync(slice, `${readFileSync(whole, 'utf8').split('\n').slice(1).join('\n')}`);
    const head = await expectExit(1, ['receipts', 'verify', slice, '--gateway-key', keyPem]);
    expect(head.stdout).toContain(`${slice}:1 seq 2: open_head: the chain of gw-e2e starts at seq 2`);
    const headOk = await expectExit(0, [
      'receipts',
      'verify',
      slice,
      '--gateway-key',
      keyPem,
      '--allow-open-head',
    ]);
    expect(headOk.stdout).toMatch(/:1 seq 2: open_head: .*\(accepted: --allow-open-head\)$/m);
    expect(last(headOk)).toBe('2 receipts in 1 chain: ok');

    // A chain ending at a count checkpoint (a running gateway, or its tail removed): open_end.
    const open = writeReceipts('open-end', [allowReceipt(alpha, opened)], 'count');
    const end = await expectExit(1, ['receipts', 'verify', open, '--gateway-key', keyPem]);
    expect(end.stdout).toContain(
      `${open}:2 seq 2: open_end: the chain of gw-e2e ends with a checkpoint of cause count, not stop`,
    );
    const endOk = await expectExit(0, [
      'receipts',
      'verify',
      open,
      '--gateway-key',
      keyPem,
      '--allow-open-tail',
    ]);
    expect(endOk.stdout).toMatch(/:2 seq 2: open_end: .*\(accepted: --allow-open-tail\)$/m);
  });
});
