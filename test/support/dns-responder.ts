// A tiny authoritative-only DNS responder over UDP (RFC 1035), for tests that need the system resolver
// (glibc getaddrinfo in a real gateway process) to get answers the test chooses: A records for the names
// it is given, an empty answer for other types of those names, NXDOMAIN for everything else. It records
// every question, so a test can show exactly which names a process looked up. Loopback only.
import dgram from 'node:dgram';

const TYPE_A = 1;
const CLASS_IN = 1;
const RCODE_NXDOMAIN = 3;
const RCODE_FORMERR = 1;

export type DnsQuestion = { readonly name: string; readonly type: number };

export type DnsResponder = {
  readonly address: string;
  readonly port: number;
  /** Every question received, in order; names lowercased, without the trailing dot. */
  readonly questions: DnsQuestion[];
  close(): Promise<void>;
};

/**
 * Listen on `address` (a loopback address) port `port` (53 for resolv.conf, which cannot name a port).
 * `records` maps a name (no trailing dot) to its IPv4 addresses.
 */
export async function startDnsResponder(
  address: string,
  records: Readonly<Record<string, readonly string[]>>,
  port = 53,
): Promise<DnsResponder> {
  if (!address.startsWith('127.')) throw new Error(`DNS responder: ${address} is not a loopback address`);
  const known = new Map(Object.entries(records).map(([k, v]) => [k.toLowerCase(), v]));
  for (const ips of known.values()) for (const ip of ips) aRecord(ip); // refuse a bad address now, not mid-test
  const questions: DnsQuestion[] = [];
  const socket = dgram.createSocket('udp4');
  socket.on('message', (msg, rinfo) => {
    const answer = respond(msg, known, questions);
    if (answer !== undefined) socket.send(answer, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, address, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  socket.on('error', () => {});
  return {
    address,
    port,
    questions,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

/** The question's name, type and where the question section ends; undefined when malformed. */
function parseQuestion(msg: Buffer): (DnsQuestion & { end: number }) | undefined {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return undefined;
  const labels: string[] = [];
  let at = 12;
  for (let i = 0; i < 128; i++) {
    const len = msg[at];
    if (len === undefined || len > 63) return undefined;
    at += 1;
    if (len === 0) break;
    if (at + len > msg.length) return undefined;
    labels.push(msg.subarray(at, at + len).toString('latin1'));
    at += len;
  }
  if (at + 4 > msg.length) return undefined;
  return { name: labels.join('.').toLowerCase(), type: msg.readUInt16BE(at), end: at + 4 };
}

function respond(
  msg: Buffer,
  known: ReadonlyMap<string, readonly string[]>,
  questions: DnsQuestion[],
): Buffer | undefined {
  if (msg.length < 12) return undefined;
  const q = parseQuestion(msg);
  const header = Buffer.alloc(12);
  msg.copy(header, 0, 0, 2); // id
  const rd = msg[2] === undefined ? 0 : msg[2] & 0x01;
  header[2] = 0x84 | rd; // QR, AA, RD copied
  if (q === undefined) {
    header[3] = RCODE_FORMERR;
    return header;
  }
  questions.push({ name: q.name, type: q.type });
  const addresses = known.get(q.name);
  const answers =
    addresses !== undefined && q.type === TYPE_A ? addresses.map((a) => aRecord(a)) : ([] as Buffer[]);
  header[3] = addresses === undefined ? RCODE_NXDOMAIN : 0;
  header.writeUInt16BE(1, 4); // QDCOUNT
  header.writeUInt16BE(answers.length, 6); // ANCOUNT
  return Buffer.concat([header, msg.subarray(12, q.end), ...answers]);
}

function aRecord(ip: string): Buffer {
  const rr = Buffer.alloc(16);
  rr.writeUInt16BE(0xc00c, 0); // name: pointer to the question's name
  rr.writeUInt16BE(TYPE_A, 2);
  rr.writeUInt16BE(CLASS_IN, 4);
  rr.writeUInt32BE(5, 6); // TTL
  rr.writeUInt16BE(4, 10);
  const octets = ip.split('.').map(Number);
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255)) {
    throw new Error(`DNS responder: ${ip} is not an IPv4 address`);
  }
  for (let i = 0; i < 4; i++) rr[12 + i] = octets[i] as number;
  return rr;
}
