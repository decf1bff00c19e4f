/**
 * What the orchestrator (run.ts) asks the load client (load-client.ts) to do, over the fork IPC channel,
 * and the sink's in-band protocol.
 *
 * Sink protocol, inside the end-to-end TLS session, one command per connection:
 *   `U <n>\n`   client sends n bytes; sink answers `OK <n>\n` once it has them all.
 *   `UH <n>\n`  same, sink answers `OK <n> <sha256 hex>\n`.
 *   `D <n>\n`   sink sends n bytes from a preallocated buffer.
 *   `DH <n>\n`  sink sends `<sha256 hex of the n bytes>\n`, then the n bytes.
 */

/** How the load client reaches the sink. */
export type Target =
  /** TLS straight to the sink: the physical line. */
  | { readonly kind: 'direct'; readonly port: number }
  /** HTTP/2 CONNECT over mTLS (naive proxy, gateway). */
  | {
      readonly kind: 'h2';
      readonly port: number;
      readonly authority: string;
      readonly certPem: string;
      readonly keyPem: string;
    }
  /** HTTP/1.1 CONNECT over plain TCP (the sidecar). */
  | { readonly kind: 'http1'; readonly port: number; readonly authority: string };

export type ClientSetup = {
  readonly caPem: string;
  readonly sinkName: string;
  /** Client-side HTTP/2 receive windows (identical for every line). */
  readonly streamWindowBytes: number;
  readonly connectionWindowBytes: number;
  /** Bound on any one operation. */
  readonly opTimeoutMs: number;
};

export type Direction = 'up' | 'down';

export type Op =
  | { readonly op: 'setup'; readonly setup: ClientSetup }
  | { readonly op: 'verify'; readonly line: string; readonly target: Target; readonly bytes: number }
  /** Open `tunnels` tunnels (CONNECT + end-to-end TLS), spread over `connections` HTTP/2 connections. */
  | {
      readonly op: 'transfer-open';
      readonly line: string;
      readonly target: Target;
      readonly tunnels: number;
      readonly connections: number;
    }
  /** The timed part: every open tunnel moves `bytes` in direction `dir`, all at once. */
  | { readonly op: 'transfer-run'; readonly dir: Direction; readonly bytes: number }
  | { readonly op: 'transfer-close' }
  | { readonly op: 'latency'; readonly line: string; readonly target: Target; readonly count: number }
  | { readonly op: 'newconn'; readonly line: string; readonly target: Target; readonly count: number }
  | {
      readonly op: 'idle-open';
      readonly line: string;
      readonly target: Target;
      readonly tunnels: number;
      readonly perConnection: number;
    }
  | { readonly op: 'idle-close' }
  | { readonly op: 'reset'; readonly line: string };

export type LatencySummary = {
  readonly count: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly meanUs: number;
  readonly maxUs: number;
};

export type OpResult =
  | {
      readonly ok: true;
      readonly seconds?: number;
      readonly bytes?: number;
      readonly latency?: LatencySummary;
      /** newconn on an h2 target: TCP + TLS handshake alone. */
      readonly handshake?: LatencySummary;
      readonly detail?: string;
    }
  | { readonly ok: false; readonly error: string };

export type Request = { readonly id: number } & Op;
export type Response = { readonly id: number; readonly result: OpResult };
