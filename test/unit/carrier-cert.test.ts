// core/carrier-cert.ts field by field (docs/contract.md "Carrier certificate"): validity, names, serial and
// the extensions a TLS client certificate needs; sidecar-carrier-cert.test.ts covers the identity itself.
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createCarrierCertificate } from '../../core/carrier-cert.js';
import { AmbiguousFieldError } from '../../core/permission-bytes.js';
import { x509 } from '../../core/x509.js';

const subjectSpkiDer = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({
  type: 'spki',
  format: 'der',
});
const NOT_BEFORE = new Date('2026-05-10T12:00:00Z');

async function issue(identity = 'agent-alpha', more: { validDays?: number; notBefore?: Date } = {}) {
  const { der } = await createCarrierCertificate({
    subjectSpkiDer,
    identity,
    notBefore: NOT_BEFORE,
    ...more,
  });
  return new x509.X509Certificate(der);
}

describe('createCarrierCertificate', () => {
  it.each([0, -1, 1.5, Number.NaN])('refuses validDays %s', async (validDays) => {
    await expect(issue('agent-alpha', { validDays })).rejects.toThrow(
      /^validDays must be a positive integer$/,
    );
  });

  it.each([
    [1, '2026-05-11T12:00:00.000Z'],
    [365, '2027-05-10T12:00:00.000Z'],
  ])('is valid for %s day(s) from notBefore', async (validDays, notAfter) => {
    const cert = await issue('agent-alpha', { validDays });
    expect([cert.notBefore.toISOString(), cert.notAfter.toISOString()]).toEqual([
      NOT_BEFORE.toISOString(),
      notAfter,
    ]);
  });

  it('starts a minute in the past when no notBefore is given', async () => {
    const before = Date.now();
    const { der } = await createCarrierCertificate({ subjectSpkiDer, identity: 'agent-alpha' });
    const notBefore = new x509.X509Certificate(der).notBefore.getTime();
    // Certificate times have whole seconds.
    expect(notBefore).toBeGreaterThanOrEqual(Math.floor((before - 60_000) / 1000) * 1000);
    expect(notBefore).toBeLessThanOrEqual(Date.now() - 59_000);
  });

  it('is a non-CA client-auth leaf for the given key, from a throwaway issuer, with a fresh positive serial', async () => {
    const cert = await issue();
    const again = await issue();
    expect(cert.issuer).toBe('CN=agent-gateway throwaway carrier issuer');
    expect(Buffer.from(cert.publicKey.rawData).equals(subjectSpkiDer)).toBe(true);
    const basic = cert.getExtension(x509.BasicConstraintsExtension);
    expect([basic?.ca, basic?.critical]).toEqual([false, true]);
    const usage = cert.getExtension(x509.KeyUsagesExtension);
    expect([usage?.usages, usage?.critical]).toEqual([x509.KeyUsageFlags.digitalSignature, true]);
    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
    expect([eku?.usages, eku?.critical]).toEqual([['1.3.6.1.5.5.7.3.2'], false]);
    expect(cert.serialNumber).toMatch(/^[0-7][0-9a-f]{31}$/);
    expect(cert.serialNumber).not.toBe(again.serialNumber);
  });

  // The CN only mirrors the identity; DN syntax in it is escaped so the subject stays one CN, exactly it.
  it.each(['agent-alpha', 'a,b+c=d', 'x;y<z>#"q"\\z', ' padded ', 'in ner'])(
    'names identity %j as the only CN',
    async (identity) => {
      const cert = await issue(identity);
      expect(cert.subjectName.toJSON()).toEqual([{ CN: [identity] }]);
    },
  );

  it('refuses an identity that no signed row could grant', async () => {
    await expect(issue('agent\nalpha')).rejects.toThrow(AmbiguousFieldError);
    await expect(issue('agent\nalpha')).rejects.toThrow(
      /^identity "agent\\nalpha" contains a control character/,
    );
  });
});
