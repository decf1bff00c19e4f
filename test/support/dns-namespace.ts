// Run a process with its own /etc/resolv.conf, leaving the machine's alone: `unshare --mount` gives the
// process a private mount namespace (propagation private, so nothing leaks back), and inside it the test's
// resolv.conf is bind-mounted over /etc/resolv.conf before the program is exec'd. glibc's resolver in that
// process then uses the test's nameserver, search list and ndots. Needs root (or CAP_SYS_ADMIN) and
// util-linux unshare; resolvConfNamespace() says why when it cannot work, so a test can skip with that.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export type ResolvConfNamespace = {
  /** argv to put in front of a command line (startGatewayProcess's `launcher`). */
  readonly launcher: readonly string[];
  cleanup(): Promise<void>;
};

const BIND_AND_EXEC = 'mount --bind "$0" /etc/resolv.conf && exec "$@"';

/** A launcher running its command with `resolvConf` as /etc/resolv.conf, or the reason it is unavailable. */
export async function resolvConfNamespace(
  resolvConf: string,
): Promise<ResolvConfNamespace | { readonly unavailable: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-resolv-'));
  const file = path.join(dir, 'resolv.conf');
  await writeFile(file, resolvConf);
  const launcher = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', BIND_AND_EXEC, file];
  // Prove it before relying on it: the command inside must see our file, and the machine must not.
  const probe = spawnSync(launcher[0] as string, [...launcher.slice(1), 'cat', '/etc/resolv.conf'], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  if (probe.error !== undefined || probe.status !== 0 || probe.stdout !== resolvConf) {
    await rm(dir, { recursive: true, force: true });
    const why = probe.error?.message ?? (probe.stderr.trim() || `exit ${probe.status}`);
    return { unavailable: `cannot give a process its own /etc/resolv.conf with unshare --mount: ${why}` };
  }
  return { launcher, cleanup: () => rm(dir, { recursive: true, force: true }) };
}
