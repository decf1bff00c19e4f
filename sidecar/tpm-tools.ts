/**
 * tpm2-tools and tpm2_ptool, run as child processes against the TCTI given on the command line. The
 * sidecar uses them to look at the persistent handle (public part and attributes only: reading them
 * needs no authorization and never touches the private key); provisioning uses them to create, persist
 * and link the key. Signing never goes through here: that is the engine's job (tpm-context.ts).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export const PERSISTENT_HANDLE_MIN = 0x81000000;
export const PERSISTENT_HANDLE_MAX = 0x81ffffff;

export function formatHandle(handle: number): string {
  return `0x${handle.toString(16).padStart(8, '0')}`;
}

/** The TPM did not answer at all (TCTI could not connect, resource manager gone, device missing). */
export class TpmUnreachableError extends Error {
  constructor(
    readonly tcti: string,
    detail: string,
  ) {
    super(`TPM unreachable through TCTI ${JSON.stringify(tcti)}: ${detail}`);
    this.name = 'TpmUnreachableError';
  }
}

export class TpmCommandError extends Error {
  constructor(
    readonly command: string,
    readonly output: string,
  ) {
    super(`${command} failed: ${output}`);
    this.name = 'TpmCommandError';
  }
}

export type TpmToolsTarget = {
  readonly tcti: string;
  /** tpm2-pkcs11 store directory (tpm2_ptool only). */
  readonly store?: string | undefined;
};

export type PersistentKeyInfo = {
  readonly spkiDer: Buffer;
  /** TPMA_OBJECT attribute names as tpm2_readpublic prints them (fixedtpm, sign, ...). */
  readonly attributes: readonly string[];
};

// Lines the TSS prints when the transport itself failed, as opposed to the TPM answering with an error.
const TRANSPORT_FAILURE =
  /Failed to instantiate TCTI|Could not load tcti|Cannot connect|Connection refused|No such file or directory|failed to allocate dbus proxy|tcti:IO failure|Could not initialize TCTI/i;
// TPM_RC_HANDLE for handle 1: nothing is persisted there.
const NO_SUCH_HANDLE = /\(0x0*18b\)|handle is not correct for the use/i;

function toolEnv(target: TpmToolsTarget): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TPM2TOOLS_TCTI: target.tcti,
    TPM2_PKCS11_TCTI: target.tcti,
  };
  if (target.store !== undefined) env['TPM2_PKCS11_STORE'] = target.store;
  return env;
}

/** Run one tool; resolves with stdout, rejects with TpmUnreachableError or TpmCommandError. */
export function runTpmTool(
  target: TpmToolsTarget,
  command: string,
  args: readonly string[],
  opts: { timeoutMs?: number; redact?: readonly string[] } = {},
): Promise<string> {
  const shown = [command, ...args.map((a) => redact(a, opts.redact))].join(' ');
  return new Promise((resolve, reject) => {
    execFile(
      command,
      [...args],
      { env: toolEnv(target), timeout: opts.timeoutMs ?? 60_000, maxBuffer: 4 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err === null) {
          resolve(stdout);
          return;
        }
        const output = redact(`${stderr}${stdout}`.trim(), opts.redact).split('\n').slice(-12).join('\n');
        const spawnErr = err as NodeJS.ErrnoException;
        if (spawnErr.code === 'ENOENT') {
          reject(new TpmCommandError(shown, `${command} is not installed (tpm2-tools / tpm2-pkcs11-tools)`));
        } else if (TRANSPORT_FAILURE.test(output) && !NO_SUCH_HANDLE.test(output)) {
          reject(new TpmUnreachableError(target.tcti, lastMeaningfulLine(output)));
        } else if (err.killed) {
          reject(new TpmUnreachableError(target.tcti, `${command} did not finish in time`));
        } else {
          reject(new TpmCommandError(shown, output || `exit code ${String(spawnErr.code)}`));
        }
      },
    );
  });
}

/**
 * Public key and attributes of the object persisted at `handle`, or undefined when the handle is empty.
 * Throws TpmUnreachableError when the TPM cannot be reached at all.
 */
export async function readPersistentKey(
  target: TpmToolsTarget,
  handle: number,
): Promise<PersistentKeyInfo | undefined> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'agw-sidecar-'));
  const out = path.join(dir, 'spki.der');
  try {
    let yaml: string;
    try {
      yaml = await runTpmTool(target, 'tpm2_readpublic', [
        '-c',
        formatHandle(handle),
        '-f',
        'der',
        '-o',
        out,
      ]);
    } catch (err) {
      if (err instanceof TpmCommandError && NO_SUCH_HANDLE.test(err.output)) return undefined;
      throw err;
    }
    return { spkiDer: await readFile(out), attributes: parseAttributes(yaml) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Attributes that make a key non-exportable and TPM-generated; without them it is not a TPM identity. */
export const REQUIRED_KEY_ATTRIBUTES = ['fixedtpm', 'fixedparent', 'sensitivedataorigin', 'sign'] as const;

export class UnsuitableKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsuitableKeyError';
  }
}

/** Refuse a key that could have been imported or could be duplicated out of the TPM. */
export function assertKeyAttributes(handle: string, attributes: readonly string[]): void {
  const missing = REQUIRED_KEY_ATTRIBUTES.filter((a) => !attributes.includes(a));
  if (missing.length > 0) {
    throw new UnsuitableKeyError(
      `the key at ${handle} lacks ${missing.join(', ')} (has ${attributes.join('|') || 'none'}): ` +
        'it may exist outside this TPM, so it cannot serve as the sidecar identity',
    );
  }
}

/** Persistent handles currently in use. */
export async function listPersistentHandles(target: TpmToolsTarget): Promise<number[]> {
  const out = await runTpmTool(target, 'tpm2_getcap', ['handles-persistent']);
  return [...out.matchAll(/0x[0-9a-f]{8}/gi)].map((m) => Number.parseInt(m[0], 16));
}

function parseAttributes(yaml: string): string[] {
  const m = /^attributes:\s*\n\s+value:\s*(\S+)/m.exec(yaml);
  return m?.[1]?.split('|') ?? [];
}

function redact(text: string, secrets: readonly string[] | undefined): string {
  let out = text;
  for (const s of secrets ?? []) if (s !== '') out = out.split(s).join('***');
  return out;
}

function lastMeaningfulLine(output: string): string {
  const lines = output.split('\n').filter((l) => l.trim() !== '');
  return lines.find((l) => TRANSPORT_FAILURE.test(l))?.trim() ?? lines.at(-1)?.trim() ?? 'no output';
}
