/**
 * The identity rules that need no certificate parser: the default OID, the length bound, and the one
 * DER encoding of the extension value (docs/contract.md "Identity"). core/identity-extension.ts applies
 * them to a peer certificate with @peculiar/x509; they live apart so that the sidecar, which only reads
 * its own carrier certificate once at start-up, does not keep that library in memory for its whole life
 * (bench/README.md "Idle memory").
 */
import * as asn1js from 'asn1js';
import { errorText } from './error-text.js';

export const DEFAULT_IDENTITY_OID = '1.3.6.1.4.1.57264.1.1';

const OID_PATTERN = /^[0-2](\.(0|[1-9]\d*))+$/;

/**
 * Longest identity accepted, in UTF-8 bytes. Anyone can put any identity in a certificate, and the
 * identity is a map key, a log field and a registry query parameter: unbounded, one certificate would
 * cost every one of those (docs/contract.md "Identity").
 */
export const MAX_IDENTITY_BYTES = 256;

const CONTROL_CHARACTER = /[\u0000-\u001f\u007f]/;

/** Why `identity` can never be accepted by the gateway for its length, or undefined when it fits. */
export function identityLengthError(identity: string): string | undefined {
  const bytes = Buffer.byteLength(identity, 'utf8');
  return bytes > MAX_IDENTITY_BYTES
    ? `identity is ${bytes} bytes, longer than ${MAX_IDENTITY_BYTES}`
    : undefined;
}

export function isValidOid(oid: string): boolean {
  return OID_PATTERN.test(oid);
}

/** DER of a UTF8String holding `identity`: the extension value a carrier certificate carries. */
export function encodeIdentityExtensionValue(identity: string): ArrayBuffer {
  return new asn1js.Utf8String({ value: identity }).toBER(false);
}

/** Exactly one DER UTF8String with no trailing bytes and valid UTF-8 contents, non-empty. */
export function decodeIdentityExtensionValue(value: ArrayBuffer): string | { error: string } {
  let parsed: ReturnType<typeof asn1js.fromBER>;
  try {
    parsed = asn1js.fromBER(value);
  } catch (err) {
    // asn1js reports most malformed input as offset -1 but throws on some (an empty GeneralizedTime),
    // and the caller promises never to throw (found by test/fuzz/identity-extension.fuzz.ts).
    return { error: `not DER: ${errorText(err)}` };
  }
  if (parsed.offset === -1) return { error: `not DER: ${parsed.result.error}` };
  if (parsed.offset !== value.byteLength) return { error: 'trailing bytes after the UTF8String' };
  if (!(parsed.result instanceof asn1js.Utf8String)) {
    return { error: `expected UTF8String, found ${parsed.result.constructor.name}` };
  }
  if (parsed.result.idBlock.isConstructed) return { error: 'constructed UTF8String is not DER' };
  const bytes = parsed.result.valueBlock.valueHexView;
  if (bytes.byteLength > MAX_IDENTITY_BYTES) {
    return { error: `identity is ${bytes.byteLength} bytes, longer than ${MAX_IDENTITY_BYTES}` };
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return { error: 'UTF8String contents are not valid UTF-8' };
  }
  if (text === '') return { error: 'identity is empty' };
  // Never grantable (the registry CLI refuses them), and a NUL cannot even be a query parameter:
  // PostgreSQL rejects it, so every CONNECT would cost a failed query.
  if (CONTROL_CHARACTER.test(text)) return { error: 'identity contains a control character' };
  // BER parsing also accepts a long-form length or a high-tag-number tag for the same string; DER has
  // exactly one encoding (docs/contract.md "Identity"), so anything else is refused.
  if (!Buffer.from(encodeIdentityExtensionValue(text)).equals(new Uint8Array(value))) {
    return { error: 'not DER: tag or length not in its shortest form' };
  }
  return text;
}
