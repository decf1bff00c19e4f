/**
 * Root-signing one row inside a command's transaction (register-principal-key / grant-principal-scope
 * --root-key), and the guard that keeps a command without --root-key from silently voiding a root
 * signature by changing the signed fields of a rooted row (docs/contract.md "Root of trust").
 */
import type pg from 'pg';
import { fetchSchemaVersion, tsText } from '../core/registry-queries.js';
import { rootKeyId } from '../core/root-signed-bytes.js';
import type { Env } from './env.js';
import { Refusal } from './errors.js';
import { openRootSigner } from './root-key.js';
import {
  assertRootSchema,
  ROOT_SCHEMA_VERSION,
  type RootableScope,
  type RootMark,
  recordRootKey,
  rootableKeys,
  rootableScopes,
  setKeyRootSignature,
  setScopeRootSignature,
} from './root-writes.js';
import { assertScopeNests, keyBytes, keySignedBy, scopeBytes, scopeSignedBy } from './rooting.js';

/**
 * A root signs the end its command asked for (now + `days`, by the database clock of this transaction,
 * which is the one the row was written with), or an end it had already signed for this row; never a
 * later end that no signature of this root covers: someone who can write the registry could have
 * stretched it, and the operator never asked to vouch for that.
 */
async function refuseStretchedEnd(
  db: pg.ClientBase,
  what: string,
  w: Window,
  ask: { readonly days: number; readonly flag: string; readonly vouched: boolean },
): Promise<void> {
  if (ask.vouched) return;
  const r = await db.query<{ requested: string; beyond: boolean }>(
    `SELECT ${tsText('(now() + make_interval(days => $1::int))')} AS requested,
       $2::timestamptz > now() + make_interval(days => $1::int) AS beyond`,
    [ask.days, w.notAfter],
  );
  const { requested, beyond } = r.rows[0]!;
  if (!beyond) return;
  throw new Refusal(
    `${what} window ${w.notBefore} .. ${w.notAfter} ends after the ${ask.days} days asked for (${requested}), ` +
      `and no signature of this root covers that end; a root signs only the end you ask for: pass ${ask.flag} ` +
      'to cover it if you vouch for it, or correct the row first. Nothing was signed',
  );
}

/**
 * Sign the key row as it now stands with root `id` and store the signature; its end is at most now +
 * `days` unless this root already signed it.
 */
export async function rootSignKey(
  env: Env,
  db: pg.ClientBase,
  keyId: string,
  id: string,
  days: number,
): Promise<RootMark> {
  await assertRootSchema(db);
  const [key] = await rootableKeys(db, keyId);
  const signer = openRootSigner(env, id);
  try {
    if (signer.spkiDer.equals(key!.spkiDer)) {
      throw new Refusal(`root ${id} is the key of principal ${keyId} itself; a root cannot vouch for itself`);
    }
    await refuseStretchedEnd(db, `principal key ${keyId}`, key!, {
      days,
      flag: 'VALID_DAYS',
      vouched: keySignedBy(key!, id, signer.spkiDer),
    });
    const m = { rootKeyId: id, rootSignature: signer.sign(keyBytes(key!)) };
    await recordRootKey(db, rootKeyId(signer.spkiDer), signer.spkiDer, null);
    await setKeyRootSignature(db, keyId, m);
    return m;
  } finally {
    signer.close();
  }
}

/**
 * Sign the scope row as it now stands with root `id`, refusing first when it outlasts its key or ends
 * after now + `days` where this root had not signed that end.
 */
export async function rootSignScope(
  env: Env,
  db: pg.ClientBase,
  scopeId: string,
  id: string,
  days: number,
): Promise<RootableScope> {
  await assertRootSchema(db);
  const [scope] = await rootableScopes(db, scopeId);
  assertScopeNests(scope!, { notBefore: scope!.keyNotBefore, notAfter: scope!.keyNotAfter });
  const signer = openRootSigner(env, id);
  try {
    await refuseStretchedEnd(db, `scope ${scope!.signingKeyId} -> ${scope!.destination}`, scope!, {
      days,
      flag: '--valid-days',
      vouched: scopeSignedBy(scope!, id, signer.spkiDer),
    });
    const m = { rootKeyId: id, rootSignature: signer.sign(scopeBytes(scope!)) };
    await recordRootKey(db, rootKeyId(signer.spkiDer), signer.spkiDer, null);
    await setScopeRootSignature(db, scopeId, m);
    return { ...scope!, ...m };
  } finally {
    signer.close();
  }
}

type Window = { readonly notBefore: string; readonly notAfter: string };

/**
 * A refresh without --root-key changed the signed fields of a row a root signed: the signature no longer
 * verifies and, with trust roots, the gateway would deny everything the row carries. Refuse (the caller's
 * transaction rolls back) and say how to re-sign.
 */
export async function refuseVoidingKeySignature(
  db: pg.ClientBase,
  before: Window & { readonly spkiDer: Buffer },
  after: Window & { readonly keyId: string; readonly spkiDer: Buffer },
): Promise<void> {
  if (sameFields(before, after) && before.spkiDer.equals(after.spkiDer)) return;
  if ((await fetchSchemaVersion(db)) < ROOT_SCHEMA_VERSION) return;
  const [row] = await rootableKeys(db, after.keyId);
  if (row?.rootKeyId == null) return;
  throw new Refusal(
    `principal key ${after.keyId} is signed by root ${row.rootKeyId}; this change of its window or key would ` +
      `void that signature and, with trust roots configured, every grant it carries: pass --root-key ${row.rootKeyId} ` +
      'to re-sign it (or root-withdraw.sh first). Nothing was changed',
  );
}

/** The same guard for a scope row a refresh extended. */
export async function refuseVoidingScopeSignature(
  db: pg.ClientBase,
  changed: boolean,
  after: { readonly id: string; readonly signingKeyId: string; readonly destination: string },
): Promise<void> {
  if (!changed) return;
  if ((await fetchSchemaVersion(db)) < ROOT_SCHEMA_VERSION) return;
  const [row] = await rootableScopes(db, after.id);
  if (row?.rootKeyId == null) return;
  throw new Refusal(
    `scope ${after.id} (${after.signingKeyId} -> ${after.destination}) is signed by root ${row.rootKeyId}; ` +
      `extending it would void that signature: pass --root-key ${row.rootKeyId} to re-sign it. Nothing was changed`,
  );
}

const sameFields = (a: Window, b: Window) => a.notBefore === b.notBefore && a.notAfter === b.notAfter;
