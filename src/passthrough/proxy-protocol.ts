/**
 * The PROXY protocol, versions 1 (text) and 2 (binary): how a load balancer
 * in front tells tether the real client address, and how tether tells its
 * backends (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt).
 *
 * Pure parser and serializers. The parser is strict and bounded: a v1 line
 * is at most 107 bytes; a v2 header is its 16-byte preamble plus at most
 * MAX_V2_PAYLOAD bytes of addresses and TLVs, whose framing must be exact.
 * Only stream families are accepted (TCP4, TCP6, UNKNOWN/UNSPEC); a LOCAL
 * command (the balancer's own health check) carries no addresses.
 */
import { isIPv6 } from "node:net";

/** The longest v1 header, CRLF included (spec §2.1). */
export const MAX_V1_BYTES = 107;
/** The most v2 address and TLV bytes accepted. The format allows 65535; real balancers send far fewer. */
export const MAX_V2_PAYLOAD = 2048;

export const V2_SIGNATURE = new Uint8Array([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");
const V1_PREFIX = encoder.encode("PROXY ");

export interface Endpoint {
  /** Dotted IPv4, or IPv6 in its RFC 5952 form. */
  address: string;
  port: number;
}

export interface ProxyHeader {
  version: 1 | 2;
  /** "local": sent by the balancer itself (a health check); use the real peer address. */
  command: "local" | "proxy";
  family: "tcp4" | "tcp6" | "unknown";
  source: Endpoint | null;
  destination: Endpoint | null;
}

export type ProxyHeaderError =
  | "not-proxy" // neither signature
  | "too-long"
  | "bad-line" // v1 syntax
  | "bad-address"
  | "bad-port"
  | "bad-version" // v2 version nibble
  | "bad-command"
  | "unsupported-family" // UDP, UNIX sockets or an unknown family
  | "bad-length" // v2 address block shorter than its family needs
  | "bad-tlv";

export type ProxyHeaderParse =
  | { kind: "incomplete" }
  | { kind: "header"; header: ProxyHeader; length: number }
  | { kind: "invalid"; reason: ProxyHeaderError };

const INCOMPLETE: ProxyHeaderParse = { kind: "incomplete" };
const invalid = (reason: ProxyHeaderError): ProxyHeaderParse => ({ kind: "invalid", reason });

/** True while `buf` agrees with `sig` for as many bytes as both have. */
function prefixMatches(buf: Uint8Array, sig: Uint8Array): boolean {
  const n = Math.min(buf.length, sig.length);
  for (let i = 0; i < n; i++) if (buf[i] !== sig[i]) return false;
  return true;
}

/** Reads a PROXY header (v1 or v2) at the start of `buf`. Never throws. */
export function parseProxyHeader(buf: Uint8Array): ProxyHeaderParse {
  if (buf.length === 0) return INCOMPLETE;
  if (buf[0] === 0x50) return prefixMatches(buf, V1_PREFIX) ? parseV1(buf) : invalid("not-proxy");
  if (buf[0] === 0x0d) return prefixMatches(buf, V2_SIGNATURE) ? parseV2(buf) : invalid("not-proxy");
  return invalid("not-proxy");
}

// ---- v1 ------------------------------------------------------------------

const DEC_OCTET = "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]\\d|\\d)";
const IPV4 = new RegExp(`^${DEC_OCTET}(?:\\.${DEC_OCTET}){3}$`);
/** 0-65535 in decimal, without leading zeros. */
const PORT = /^(?:0|[1-9]\d{0,4})$/;

function port(s: string | undefined): number | null {
  if (s === undefined || !PORT.test(s)) return null;
  const n = Number(s);
  return n <= 65535 ? n : null;
}

function parseV1(buf: Uint8Array): ProxyHeaderParse {
  const scan = Math.min(buf.length, MAX_V1_BYTES);
  let lf = -1;
  for (let i = V1_PREFIX.length; i < scan; i++) {
    const b = buf[i] as number;
    if (b === 0x0a) {
      lf = i;
      break;
    }
    // Printable ASCII and the CR of the CRLF only.
    if ((b < 0x20 || b > 0x7e) && b !== 0x0d) return invalid("bad-line");
  }
  if (lf === -1) return buf.length >= MAX_V1_BYTES ? invalid("too-long") : INCOMPLETE;
  if (buf[lf - 1] !== 0x0d) return invalid("bad-line");
  const line = latin1.decode(buf.subarray(0, lf - 1));
  if (line.includes("\r")) return invalid("bad-line");
  const parts = line.split(" ");
  const length = lf + 1;
  // "PROXY UNKNOWN" may be followed by anything up to the CRLF, which the receiver ignores (§2.1).
  if (parts[1] === "UNKNOWN")
    return {
      kind: "header",
      header: { version: 1, command: "proxy", family: "unknown", source: null, destination: null },
      length,
    };
  if (parts.length !== 6) return invalid("bad-line");
  const [, proto, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  let family: "tcp4" | "tcp6";
  if (proto === "TCP4") {
    if (!IPV4.test(src) || !IPV4.test(dst)) return invalid("bad-address");
    family = "tcp4";
  } else if (proto === "TCP6") {
    if (!isV6Literal(src) || !isV6Literal(dst)) return invalid("bad-address");
    family = "tcp6";
  } else return invalid("bad-line");
  const sp = port(sport);
  const dp = port(dport);
  if (sp === null || dp === null) return invalid("bad-port");
  const norm = family === "tcp6" ? (a: string) => formatV6(v6Bytes(a)) : (a: string) => a;
  return {
    kind: "header",
    header: {
      version: 1,
      command: "proxy",
      family,
      source: { address: norm(src), port: sp },
      destination: { address: norm(dst), port: dp },
    },
    length,
  };
}

/** An IPv6 literal without a zone index or brackets. */
function isV6Literal(s: string): boolean {
  return !s.includes("%") && isIPv6(s);
}

// ---- v2 ------------------------------------------------------------------

const CMD_LOCAL = 0x0;
const CMD_PROXY = 0x1;
const FAM_UNSPEC = 0x00;
const FAM_TCP4 = 0x11;
const FAM_TCP6 = 0x21;

function parseV2(buf: Uint8Array): ProxyHeaderParse {
  if (buf.length < 13) return INCOMPLETE;
  const verCmd = buf[12] as number;
  if (verCmd >> 4 !== 2) return invalid("bad-version");
  const cmd = verCmd & 0x0f;
  if (cmd !== CMD_LOCAL && cmd !== CMD_PROXY) return invalid("bad-command");
  if (buf.length < 14) return INCOMPLETE;
  const fam = buf[13] as number;
  // A LOCAL header's family is ignored (§2.2); a PROXY header must name a stream family.
  if (cmd === CMD_PROXY && fam !== FAM_UNSPEC && fam !== FAM_TCP4 && fam !== FAM_TCP6)
    return invalid("unsupported-family");
  if (buf.length < 16) return INCOMPLETE;
  const len = ((buf[14] as number) << 8) | (buf[15] as number);
  if (len > MAX_V2_PAYLOAD) return invalid("too-long");
  const need = cmd === CMD_PROXY ? (fam === FAM_TCP4 ? 12 : fam === FAM_TCP6 ? 36 : 0) : 0;
  if (len < need) return invalid("bad-length");
  if (buf.length < 16 + len) return INCOMPLETE;
  const length = 16 + len;
  // A LOCAL or UNSPEC block is discarded unread (§2.2); after real addresses, TLVs must be well framed.
  if (cmd === CMD_LOCAL || fam === FAM_UNSPEC) {
    const command = cmd === CMD_LOCAL ? "local" : "proxy";
    return {
      kind: "header",
      header: { version: 2, command, family: "unknown", source: null, destination: null },
      length,
    };
  }
  if (!tlvFramingOk(buf, 16 + need, length)) return invalid("bad-tlv");
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let source: Endpoint;
  let destination: Endpoint;
  if (fam === FAM_TCP4) {
    source = { address: formatV4(buf.subarray(16, 20)), port: view.getUint16(24) };
    destination = { address: formatV4(buf.subarray(20, 24)), port: view.getUint16(26) };
  } else {
    source = { address: formatV6(buf.subarray(16, 32)), port: view.getUint16(48) };
    destination = { address: formatV6(buf.subarray(32, 48)), port: view.getUint16(50) };
  }
  return {
    kind: "header",
    header: { version: 2, command: "proxy", family: fam === FAM_TCP4 ? "tcp4" : "tcp6", source, destination },
    length,
  };
}

/** TLVs (type, 16-bit length, value) must exactly fill what follows the addresses (§2.2.7). */
function tlvFramingOk(buf: Uint8Array, from: number, to: number): boolean {
  let p = from;
  while (p < to) {
    if (p + 3 > to) return false;
    const n = ((buf[p + 1] as number) << 8) | (buf[p + 2] as number);
    p += 3 + n;
  }
  return p === to;
}

// ---- addresses -------------------------------------------------------------

function formatV4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/**
 * RFC 5952: lower case, leading zeros dropped, the longest run (2+) of zero
 * groups as "::", and an IPv4-mapped address as ::ffff:a.b.c.d (§5).
 */
export function formatV6(b: Uint8Array): string {
  let mapped = b[10] === 0xff && b[11] === 0xff;
  for (let i = 0; i < 10 && mapped; i++) if (b[i] !== 0) mapped = false;
  if (mapped) return `::ffff:${formatV4(b.subarray(12, 16))}`;
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(((b[i] as number) << 8) | (b[i + 1] as number));
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number) =>
    g
      .slice(from, to)
      .map((x) => x.toString(16))
      .join(":");
  if (bestAt === -1) return hex(0, 8);
  return `${hex(0, bestAt)}::${hex(bestAt + bestLen, 8)}`;
}

/** 16 bytes of a valid IPv6 literal (checked by the caller), an embedded IPv4 tail included. */
export function v6Bytes(s: string): Uint8Array {
  const out = new Uint8Array(16);
  let text = s;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".", lastColon)) {
    for (const o of text.slice(lastColon + 1).split(".")) tail.push(Number(o));
    text = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [head = "", rest] = text.split("::");
  const h = head ? head.split(":") : [];
  const t = rest ? rest.split(":") : [];
  const groups = rest === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  groups.forEach((x, i) => {
    const v = Number.parseInt(x, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  if (tail.length === 4) out.set(tail, 12);
  return out;
}

function v4Bytes(s: string): Uint8Array {
  return new Uint8Array(s.split(".").map(Number));
}

const isV4 = (s: string) => IPV4.test(s);

/** "::ffff:10.0.0.1" → "10.0.0.1": a dual-stack socket's view of an IPv4 peer. */
function unmapV4(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m?.[1] && isV4(m[1]) ? m[1] : address;
}

/**
 * The header tether sends to a backend for a connection from `source` to
 * `destination`. Both must be of one family for TCP4/TCP6: an IPv4 address
 * paired with an IPv6 one is sent as IPv4-mapped IPv6. Null endpoints (or
 * addresses that are not IPs) give UNKNOWN (v1) / UNSPEC (v2).
 */
export function proxyHeaderFor(
  version: 1 | 2,
  source: Endpoint | null,
  destination: Endpoint | null,
): ProxyHeader {
  const unknown: ProxyHeader = {
    version,
    command: "proxy",
    family: "unknown",
    source: null,
    destination: null,
  };
  if (!source || !destination) return unknown;
  const s = unmapV4(source.address);
  const d = unmapV4(destination.address);
  const s4 = isV4(s);
  const d4 = isV4(d);
  if ((!s4 && !isV6Literal(s)) || (!d4 && !isV6Literal(d))) return unknown;
  if (s4 && d4)
    return {
      version,
      command: "proxy",
      family: "tcp4",
      source: { address: s, port: source.port },
      destination: { address: d, port: destination.port },
    };
  const v6 = (a: string, is4: boolean) => formatV6(is4 ? v6Bytes(`::ffff:${a}`) : v6Bytes(a));
  return {
    version,
    command: "proxy",
    family: "tcp6",
    source: { address: v6(s, s4), port: source.port },
    destination: { address: v6(d, d4), port: destination.port },
  };
}

/** The wire form of a header (v1 text or v2 binary, after `h.version`). */
export function serializeProxyHeader(h: ProxyHeader): Uint8Array {
  return h.version === 1 ? serializeV1(h) : serializeV2(h);
}

function serializeV1(h: ProxyHeader): Uint8Array {
  // v1 has no LOCAL command: UNKNOWN tells the receiver to use the real endpoints (§2.1).
  if (h.command === "local" || h.family === "unknown" || !h.source || !h.destination)
    return encoder.encode("PROXY UNKNOWN\r\n");
  const proto = h.family === "tcp4" ? "TCP4" : "TCP6";
  return encoder.encode(
    `PROXY ${proto} ${h.source.address} ${h.destination.address} ${h.source.port} ${h.destination.port}\r\n`,
  );
}

function serializeV2(h: ProxyHeader): Uint8Array {
  const addresses = h.command === "proxy" && h.family !== "unknown" && h.source && h.destination;
  const len = !addresses ? 0 : h.family === "tcp4" ? 12 : 36;
  const out = new Uint8Array(16 + len);
  out.set(V2_SIGNATURE, 0);
  out[12] = 0x20 | (h.command === "local" ? CMD_LOCAL : CMD_PROXY);
  out[13] = !addresses ? FAM_UNSPEC : h.family === "tcp4" ? FAM_TCP4 : FAM_TCP6;
  out[14] = len >> 8;
  out[15] = len & 0xff;
  if (!addresses || !h.source || !h.destination) return out;
  const view = new DataView(out.buffer);
  if (h.family === "tcp4") {
    out.set(v4Bytes(h.source.address), 16);
    out.set(v4Bytes(h.destination.address), 20);
    view.setUint16(24, h.source.port);
    view.setUint16(26, h.destination.port);
  } else {
    out.set(v6Bytes(h.source.address), 16);
    out.set(v6Bytes(h.destination.address), 32);
    view.setUint16(48, h.source.port);
    view.setUint16(50, h.destination.port);
  }
  return out;
}
