/** Every parser fuzz target, in the order they run: shared by the CI sample and `npm run fuzz`. */
import { configTarget } from './config.fuzz.js';
import { destinationTarget } from './destination.fuzz.js';
import type { FuzzTarget } from './fuzz-target.js';
import { identityExtensionTarget } from './identity-extension.fuzz.js';
import { permissionBytesTarget } from './permission-bytes.fuzz.js';

export const TARGETS: readonly FuzzTarget[] = [
  destinationTarget,
  identityExtensionTarget,
  permissionBytesTarget,
  configTarget,
];
