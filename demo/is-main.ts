/** Shared by the demo's programs, which tests also import for their functions. */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/** True when the module whose import.meta.url is `moduleUrl` is the script node was started with. */
export function isMain(moduleUrl: string): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return moduleUrl === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}
