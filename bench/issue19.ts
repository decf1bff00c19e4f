/**
 * Issue #19's table and targets (bench/README.md "Fourth round (issue #19)"): every figure of the issue
 * with its ratio to (a) direct TLS and to (b) the naive-Node baseline of the same run, and whether the
 * target (given in the issue against h2o, translated to (b) with the issue's h2o/baseline ratios) is met.
 * run.ts measures (it owns the load client and the gateways); this module only reads the samples.
 */
import { type Spread, table } from './support/stats.js';

const MiB = 1024 * 1024;

/** Lines the report reads: (a), (b), (c), (c) with the decision cache off, (c) with the default workers. */
export type Issue19Lines = {
  readonly get: (line: 'a' | 'b' | 'c' | 'miss' | 'shipped', key: string) => Spread | undefined;
  /** Per line (c) / shipped: idle-figure readings of the whole process tree, bytes. */
  readonly idle: {
    readonly b: IdleReadings | undefined;
    readonly c: IdleReadings | undefined;
    readonly shipped: IdleReadings | undefined;
  };
  readonly shippedProcesses: number | undefined;
  readonly concTunnels: number;
  readonly concConnections: number;
  readonly idleTunnels: number;
  /** How the growth figure was read (RSS after close, or after a forced GC). */
  readonly growthMethod: string;
};

export type IdleReadings = {
  readonly processes: number;
  readonly baselineRssBytes: number;
  readonly openRssBytes: readonly number[];
  readonly closedRssBytes: readonly number[];
  readonly firstPerTunnelBytes: number;
};

type Target = { readonly text: string; readonly ok: (value: number, vsB: number | undefined) => boolean };

const vsBAtMost = (limit: number): Target => ({
  text: `≤ ${limit.toFixed(2)}× (b)`,
  ok: (_v, r) => r !== undefined && r <= limit,
});
const vsBAtLeast = (limit: number): Target => ({
  text: `≥ ${limit.toFixed(2)}× (b)`,
  ok: (_v, r) => r !== undefined && r >= limit,
});
const atMost = (limit: number, unit: string): Target => ({
  text: `≤ ${limit} ${unit}`,
  ok: (v) => v <= limit,
});

const med = (x: Spread | undefined) => x?.median;
const div = (x: number | undefined, y: number | undefined) =>
  x === undefined || y === undefined || y === 0 ? undefined : x / y;
const fixed = (x: number | undefined, digits: number) => (x === undefined ? '–' : x.toFixed(digits));

export function issue19Report(l: Issue19Lines): string {
  const rows: string[][] = [];
  const row = (
    figure: string,
    c: number | undefined,
    a: number | undefined,
    b: number | undefined,
    digits: number,
    target: Target | undefined,
  ) => {
    const vsB = div(c, b);
    rows.push([
      figure,
      fixed(c, digits),
      fixed(a, digits),
      fixed(b, digits),
      fixed(div(c, a), 2),
      fixed(vsB, 2),
      target?.text ?? 'reported only',
      target === undefined || c === undefined ? '–' : target.ok(c, vsB) ? 'met' : 'NOT met',
    ]);
  };
  const conc = `${l.concTunnels} tunnels on ${l.concConnections} connection(s)`;
  for (const dir of ['down', 'up'] as const) {
    const k = `conc.${dir}.proxyCpuPerGiB`;
    row(`${conc}, CPU-s/GiB ${dir}`, med(l.get('c', k)), undefined, med(l.get('b', k)), 2, vsBAtMost(0.65));
  }
  for (const dir of ['down', 'up'] as const) {
    const k = `conc.${dir}.MBps`;
    row(
      `${conc}, MB/s ${dir}`,
      med(l.get('c', k)),
      med(l.get('a', k)),
      med(l.get('b', k)),
      0,
      vsBAtLeast(dir === 'down' ? 1.5 : 2.0),
    );
  }
  row(
    'CONNECT→200 p50 µs, warm connection, decision cache hit',
    med(l.get('c', 'latency.p50Us')),
    undefined,
    med(l.get('b', 'latency.p50Us')),
    0,
    vsBAtMost(1.0),
  );
  row(
    'CONNECT→200 p99 µs, same',
    med(l.get('c', 'latency.p99Us')),
    undefined,
    med(l.get('b', 'latency.p99Us')),
    0,
    vsBAtMost(1.32),
  );
  row(
    'CONNECT→200 p50 µs, decision cache off (every CONNECT a lookup)',
    med(l.get('miss', 'latency.p50Us')),
    undefined,
    med(l.get('b', 'latency.p50Us')),
    0,
    undefined,
  );
  const ms = (x: number | undefined) => (x === undefined ? undefined : x / 1000);
  row(
    'new connection p50 ms (TCP + TLS 1.3 mTLS + h2 + CONNECT→200)',
    ms(med(l.get('c', 'newconn.p50Us'))),
    ms(med(l.get('a', 'newconn.p50Us'))),
    ms(med(l.get('b', 'newconn.p50Us'))),
    2,
    vsBAtMost(0.8),
  );
  row(
    'new connection, TLS part alone (TCP + handshake) p50 ms',
    ms(med(l.get('c', 'newconn.tlsP50Us'))),
    ms(med(l.get('a', 'newconn.p50Us'))),
    ms(med(l.get('b', 'newconn.tlsP50Us'))),
    2,
    undefined,
  );
  const perProcess = (bytes: number | undefined, n: number | undefined) =>
    bytes === undefined || n === undefined ? undefined : bytes / n / MiB;
  const idleB = l.idle.b;
  const idleC = l.idle.c;
  const idleS = l.idle.shipped;
  row(
    'RSS fresh, MiB per gateway process (workers = 1)',
    perProcess(idleC?.baselineRssBytes, idleC?.processes),
    undefined,
    perProcess(idleB?.baselineRssBytes, idleB?.processes),
    1,
    atMost(60, 'MiB'),
  );
  row(
    `RSS with ${l.idleTunnels} idle tunnels, MiB (workers = 1, 1st cycle)`,
    perProcess(idleC?.openRssBytes[0], 1),
    undefined,
    perProcess(idleB?.openRssBytes[0], 1),
    1,
    undefined,
  );
  row(
    `RSS fresh as shipped (default workers: ${l.shippedProcesses ?? '?'} process${l.shippedProcesses === 1 ? '' : 'es'}), MiB in all`,
    perProcess(idleS?.baselineRssBytes, 1),
    undefined,
    undefined,
    1,
    undefined,
  );
  row(
    '… the same, MiB per process',
    perProcess(idleS?.baselineRssBytes, idleS?.processes),
    undefined,
    undefined,
    1,
    atMost(60, 'MiB'),
  );
  row(
    `RSS as shipped with ${l.idleTunnels} idle tunnels, MiB in all`,
    perProcess(idleS?.openRssBytes[0], 1),
    undefined,
    undefined,
    1,
    undefined,
  );
  row(
    'KiB per added idle tunnel (1st cycle, workers = 1)',
    idleC === undefined ? undefined : idleC.firstPerTunnelBytes / 1024,
    undefined,
    idleB === undefined ? undefined : idleB.firstPerTunnelBytes / 1024,
    1,
    atMost(12, 'KiB'),
  );
  const growth = (r: IdleReadings | undefined) =>
    r === undefined || r.closedRssBytes.length < 2
      ? undefined
      : ((r.closedRssBytes.at(-1) as number) - (r.closedRssBytes[0] as number)) / MiB;
  row(
    `growth over cycles 2–${idleC?.closedRssBytes.length ?? '?'} (RSS after the last close − after the 1st), MiB`,
    growth(idleC),
    undefined,
    growth(idleB),
    1,
    atMost(1, 'MiB (noise allowance)'),
  );
  return [
    `Issue #19 targets: line (c), the gateway as shipped but for workers = 1 where it says so; (a) and (b) from ` +
      `the same run. Targets are the issue's, in (b) terms (h2o/baseline ratios of the issue's run: CPU 0.44 / ` +
      `0.41, CONNECT p50 0.88, new connection 0.63); p99 target 1.5× h2o taken at h2o's p50 ratio (0.88) → ` +
      `1.32× (b). (a) has no proxy, so CPU, CONNECT and RSS have no (a) figure; its new connection is TCP + TLS ` +
      `to the sink. Growth: ${l.growthMethod}.`,
    '',
    table(['figure', '(c) gateway', '(a) direct TLS', '(b) naive', 'vs (a)', 'vs (b)', 'target', ''], rows),
  ].join('\n');
}
