/**
 * The CLI's database session: one client, connection and query failures reported as environment
 * errors naming the database, and every write inside one transaction so a refusal or a failure
 * leaves the registry as it was.
 */
import pg from 'pg';
import { errorText } from '../core/error-text.js';
import { latestKnownVersion } from '../core/migrate.js';
import { fetchSchemaVersion, tsText } from '../core/registry-queries.js';
import { type Micros, parseTimestamp } from '../core/timestamp.js';
import type { DatabaseTarget } from './env.js';
import { CliError, EnvironmentError, Refusal } from './errors.js';

// SQLSTATE restrict_violation: the registry's own refusal (migrations/0005, docs/contract.md "A
// revocation is final"); the transaction rolled back, so the registry is unchanged.
const REGISTRY_REFUSED = '23001';

const CONNECT_TIMEOUT_MS = 10_000;
// An admin command waits on row locks at most this long (e.g. a concurrent grant for the same key).
const STATEMENT_TIMEOUT_MS = 30_000;

export type Registry = {
  readonly client: pg.Client;
  readonly target: DatabaseTarget;
  /** Run `fn` in a transaction: COMMIT when it returns, ROLLBACK when it throws. */
  transaction<T>(fn: (client: pg.Client) => Promise<T>): Promise<T>;
  close(): Promise<void>;
};

/** Connect and check the schema is one this build knows (older versions hold the same tables). */
export async function openRegistry(target: DatabaseTarget): Promise<Registry> {
  const client = new pg.Client({
    connectionString: target.url,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    statement_timeout: STATEMENT_TIMEOUT_MS,
    application_name: 'agent_gateway_registry_cli',
  });
  // A dropped connection surfaces as a failed query; without a listener it would crash the process.
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw unreachable(target, err);
  }
  const registry: Registry = {
    client,
    target,
    async transaction(fn) {
      await query(target, () => client.query('BEGIN'));
      try {
        const result = await fn(client);
        await query(target, () => client.query('COMMIT'));
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        throw err;
      }
    },
    async close() {
      await client.end().catch(() => {});
    },
  };
  try {
    await checkSchema(registry);
  } catch (err) {
    await registry.close();
    throw err;
  }
  return registry;
}

/** Open, run, close. */
export async function withRegistry<T>(
  target: DatabaseTarget,
  fn: (registry: Registry) => Promise<T>,
): Promise<T> {
  const registry = await openRegistry(target);
  try {
    return await fn(registry);
  } catch (err) {
    throw asDatabaseError(target, err);
  } finally {
    await registry.close();
  }
}

async function checkSchema(registry: Registry): Promise<void> {
  const { target } = registry;
  const version = await query(target, () => fetchSchemaVersion(registry.client));
  if (version === 0) {
    throw new EnvironmentError(
      `database ${target.display} has no agent_gateway registry schema: run registry-cli/migrate.sh first`,
    );
  }
  const known = latestKnownVersion();
  if (version > known) {
    throw new EnvironmentError(
      `database ${target.display} has registry schema version ${version}, newer than this CLI knows (${known}): ` +
        'upgrade the CLI',
    );
  }
}

/** The database clock, in canonical text and as micros. Inside a transaction this is its start time. */
export async function databaseNow(client: pg.ClientBase): Promise<{ text: string; micros: Micros }> {
  const r = await client.query<{ now: string }>(`SELECT ${tsText('now()')} AS now`);
  const text = r.rows[0]!.now;
  return { text, micros: parseTimestamp(text) };
}

async function query<T>(target: DatabaseTarget, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw asDatabaseError(target, err);
  }
}

/**
 * Errors from pg become environment errors that name the database, except the registry's own
 * refusals, which are refusals; the CLI's own errors pass.
 */
export function asDatabaseError(target: DatabaseTarget, err: unknown): unknown {
  if (err instanceof CliError) return err;
  if (err instanceof pg.DatabaseError && err.code === REGISTRY_REFUSED) {
    return new Refusal(`${err.message}; nothing was written`, { cause: err });
  }
  if (err instanceof pg.DatabaseError) {
    return new EnvironmentError(
      `database ${target.display} (${target.source}) failed: ${err.message}${err.code ? ` [${err.code}]` : ''}`,
      { cause: err },
    );
  }
  if (isConnectionError(err)) return unreachable(target, err);
  return err;
}

function unreachable(target: DatabaseTarget, err: unknown): EnvironmentError {
  const why = errorText(err);
  return new EnvironmentError(`cannot reach the database at ${target.display} (${target.source}): ${why}`, {
    cause: err,
  });
}

function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  return (
    (typeof code === 'string' && /^(E[A-Z]+)$/.test(code)) ||
    /Connection terminated|timeout expired|connection timeout/i.test(err.message)
  );
}
