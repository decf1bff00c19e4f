/**
 * The registry's listen lane: one dedicated connection (never a pool client: LISTEN belongs to a session)
 * on the change channel of migrations/0003, with a heartbeat that has its own deadline, TCP keepalive,
 * and reconnects with backoff. A connection that dies without a FIN or RST (a cable pulled, a NAT entry
 * dropped) delivers no 'error' and no 'end'; only a round trip that does not come back shows it, so the
 * heartbeat is what bounds how long notifications can be silently lost (docs/contract.md, live revocation).
 */
import pg from 'pg';
import { REGISTRY_CHANGE_CHANNEL } from '../core/registry-queries.js';
import { BackoffTimeout } from './backoff-timeout.js';
import type { GatewayMetrics } from './metrics.js';
import { parseRegistryChange, type RegistryChange } from './registry-changes.js';
import { type AuthorizationLogger, errorText, silentLogger } from './registry-errors.js';

export type RegistryListenerOptions = {
  readonly clientConfig: pg.ClientConfig;
  readonly onChange: (change: RegistryChange) => void;
  /** The listener came up (LISTEN is in place) or went down; not called twice in a row for the same state. */
  readonly onState: (up: boolean) => void;
  readonly heartbeatIntervalMs?: number | undefined;
  /** A heartbeat not answered within this is a dead connection. */
  readonly heartbeatTimeoutMs?: number | undefined;
  readonly reconnectInitialMs?: number | undefined;
  readonly reconnectMaxMs?: number | undefined;
  readonly metrics?: GatewayMetrics | undefined;
  readonly logger?: AuthorizationLogger | undefined;
};

export class RegistryListener {
  private readonly logger: AuthorizationLogger;
  private readonly heartbeatIntervalMs: number;
  private readonly heartbeatTimeoutMs: number;
  private readonly reconnect: BackoffTimeout;
  private client: pg.Client | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private isUp = false;
  private closed = false;
  private error: string | undefined;

  constructor(private readonly opts: RegistryListenerOptions) {
    this.logger = opts.logger ?? silentLogger;
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 2_000;
    this.heartbeatTimeoutMs = opts.heartbeatTimeoutMs ?? 2_000;
    this.reconnect = new BackoffTimeout(() => void this.connect(), {
      initialDelayMs: opts.reconnectInitialMs ?? 100,
      maxDelayMs: opts.reconnectMaxMs ?? 3_000,
    });
    opts.metrics?.registryListenerUp.set(0);
  }

  get up(): boolean {
    return this.isUp;
  }

  get lastError(): string | undefined {
    return this.error;
  }

  /** Resolves after the first attempt, whatever its outcome: a registry down at startup is retried. */
  start(): Promise<void> {
    return this.connect();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reconnect.stop();
    clearInterval(this.heartbeatTimer);
    const client = this.client;
    this.client = undefined;
    this.setUp(false);
    if (client !== undefined) await endQuietly(client);
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const client = new pg.Client({
      ...this.opts.clientConfig,
      // Keepalive probes start sooner than on the pool: this connection is idle by design.
      keepAlive: true,
      keepAliveInitialDelayMillis: 1_000,
      // The heartbeat's own deadline decides when this connection is dead; pg's query timeout (the
      // lookup lane's, much shorter) would drop it at the first slow answer under load.
      query_timeout: undefined,
    });
    this.client = client;
    client.on('error', (err) => this.lost(client, err));
    client.on('end', () => this.lost(client, new Error('LISTEN connection ended')));
    client.on('notification', (msg) => {
      if (client === this.client && msg.channel === REGISTRY_CHANGE_CHANNEL) {
        this.opts.onChange(parseRegistryChange(msg.payload));
      }
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${REGISTRY_CHANGE_CHANNEL}`);
    } catch (err) {
      this.lost(client, err);
      return;
    }
    if (client !== this.client || this.closed) {
      await endQuietly(client);
      return;
    }
    this.reconnect.reset();
    this.error = undefined;
    this.heartbeatTimer = setInterval(() => this.heartbeat(client), this.heartbeatIntervalMs);
    this.heartbeatTimer.unref();
    this.logger.info({ channel: REGISTRY_CHANGE_CHANNEL }, 'registry change listener up');
    this.setUp(true);
  }

  private heartbeat(client: pg.Client): void {
    if (client !== this.client) return;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`heartbeat not answered within ${this.heartbeatTimeoutMs} ms`)),
        this.heartbeatTimeoutMs,
      );
    });
    Promise.race([client.query('SELECT 1'), deadline])
      .catch((err: unknown) => this.lost(client, err))
      .finally(() => clearTimeout(timer));
  }

  private lost(client: pg.Client, err: unknown): void {
    if (client !== this.client) return;
    this.client = undefined;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    const wasUp = this.isUp;
    this.error = errorText(err);
    void endQuietly(client);
    this.setUp(false);
    if (this.closed) return;
    this.opts.metrics?.registryErrors.inc({ kind: 'listener' });
    this.logger.warn(
      { err: this.error, was_up: wasUp, retry_in_ms: this.reconnect.delayMs },
      'registry change listener down: re-checking tunnels by polling until it reconnects',
    );
    this.reconnect.runOnce();
  }

  private setUp(up: boolean): void {
    if (this.isUp === up) return;
    this.isUp = up;
    this.opts.metrics?.registryListenerUp.set(up ? 1 : 0);
    this.opts.onState(up);
  }
}

async function endQuietly(client: pg.Client): Promise<void> {
  client.removeAllListeners('notification');
  client.removeAllListeners('end');
  client.removeAllListeners('error');
  client.on('error', () => {});
  try {
    // A half-dead socket may never answer the Terminate message: do not wait on it, and do not leave
    // it open until TCP keepalive gives up either.
    await Promise.race([client.end(), new Promise((r) => setTimeout(r, 1_000).unref())]);
  } catch {
    // already gone
  }
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}
