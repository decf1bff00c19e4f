/**
 * Where the CLI's configuration comes from (docs/contract.md "Registry CLI"). Every error names the variable
 * to set.
 */
import { EnvironmentError } from './errors.js';

export type Env = Readonly<Record<string, string | undefined>>;

export type DatabaseTarget = {
  readonly url: string;
  /** The variable the URL came from, for messages. */
  readonly source: 'AGENT_GATEWAY_DATABASE_URL' | 'DATABASE_URL';
  /** host:port/database, never the password. */
  readonly display: string;
};

export function databaseFromEnv(env: Env): DatabaseTarget {
  const own = env['AGENT_GATEWAY_DATABASE_URL'];
  const generic = env['DATABASE_URL'];
  const [url, source] =
    own !== undefined && own !== ''
      ? [own, 'AGENT_GATEWAY_DATABASE_URL' as const]
      : generic !== undefined && generic !== ''
        ? [generic, 'DATABASE_URL' as const]
        : [undefined, undefined];
  if (url === undefined || source === undefined) {
    throw new EnvironmentError(
      'no database configured: set AGENT_GATEWAY_DATABASE_URL (or DATABASE_URL) to a postgresql:// URL',
    );
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new EnvironmentError(`${source} is not a URL (expected postgresql://user@host:port/database)`);
  }
  if (parsed.protocol !== 'postgresql:' && parsed.protocol !== 'postgres:') {
    throw new EnvironmentError(`${source} must be a postgresql:// URL, got ${parsed.protocol}//...`);
  }
  const host = parsed.host === '' ? (parsed.searchParams.get('host') ?? 'localhost') : parsed.host;
  return { url, source, display: `${host}${parsed.pathname}` };
}
