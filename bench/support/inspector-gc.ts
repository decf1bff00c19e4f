/**
 * A full garbage collection in another node process, through its inspector (`--inspect=127.0.0.1:<port>`,
 * loopback only): the debug mode of the idle figure's growth reading (`--idle-gc`), so RSS after closing
 * the tunnels is read once the garbage they left is collected rather than whenever V8 gets to it.
 * Uses the WebSocket client built into Node 22+.
 */

const TIMEOUT_MS = 30_000;

type Target = { webSocketDebuggerUrl?: string };

/** HeapProfiler.collectGarbage in the process whose inspector listens on `port`. */
export async function collectGarbage(port: number): Promise<void> {
  const list = (await (
    await fetch(`http://127.0.0.1:${port}/json/list`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  ).json()) as Target[];
  const url = list[0]?.webSocketDebuggerUrl;
  if (url === undefined) throw new Error(`inspector on port ${port} lists no target`);
  const ws = new WebSocket(url);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('inspector: collectGarbage timed out')), TIMEOUT_MS);
      ws.onerror = () => {
        clearTimeout(timer);
        reject(new Error(`inspector: cannot reach ${url}`));
      };
      ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
      ws.onmessage = (event) => {
        const msg = JSON.parse(String(event.data)) as { id?: number; error?: { message: string } };
        if (msg.id !== 1) return;
        clearTimeout(timer);
        if (msg.error !== undefined) reject(new Error(`inspector: ${msg.error.message}`));
        else resolve();
      };
    });
  } finally {
    ws.close();
  }
}
