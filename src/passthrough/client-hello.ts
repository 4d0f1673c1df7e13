/**
 * The ClientHello, read without terminating TLS: the server name (SNI), the
 * legacy session ID, and whether the client offers a session ticket, a
 * pre-shared key or TLS 1.3. Pure; the connection code feeds it the bytes
 * received so far (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2, RFC 6066 §3).
 *
 * Strict: anything that is not a well-formed ClientHello is "invalid" and
 * the connection is closed, so a parser in a backend never sees bytes that
 * this one read differently.
 */
import { Cursor, type HelloError, Malformed, readFirstHandshake } from "./records.ts";

const HANDSHAKE_CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const EXT_SESSION_TICKET = 35;
const EXT_PRE_SHARED_KEY = 41;
const EXT_SUPPORTED_VERSIONS = 43;
const TLS13 = 0x0304;

export interface ClientHello {
  /** legacy_version: 0x0303 for TLS 1.2 and 1.3 clients. */
  legacyVersion: number;
  /** The host_name from server_name, lower-cased; null when absent. */
  serverName: string | null;
  /** legacy_session_id: empty for a fresh TLS 1.2 session, random under TLS 1.3 (RFC 8446 §4.1.2). */
  sessionId: Uint8Array;
  /** The session_ticket extension is present (RFC 5077); `ticketLength` > 0: a ticket is offered. */
  sessionTicket: boolean;
  ticketLength: number;
  /** The pre_shared_key extension is present (TLS 1.3 resumption, RFC 8446 §4.2.11). */
  preSharedKey: boolean;
  /** supported_versions lists TLS 1.3. */
  offersTls13: boolean;
}

export type ClientHelloParse =
  | { kind: "incomplete" }
  | { kind: "hello"; hello: ClientHello }
  | { kind: "invalid"; reason: HelloError };

/** Letters, digits, '-', '_' and '.': what a DNS host name may hold (RFC 6066 §3: no IP literals, no trailing dot). */
const HOST_CHAR = (() => {
  const t = new Uint8Array(256);
  for (const c of "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") t[c.charCodeAt(0)] = 1;
  return t;
})();

function hostName(c: Cursor): string {
  const n = c.remaining;
  if (n === 0 || n > 253) throw new Malformed("bad-server-name");
  let s = "";
  let prev = 0x2e;
  for (let i = 0; i < n; i++) {
    const b = c.u8();
    // No empty labels: no leading, trailing or doubled dot.
    if (HOST_CHAR[b] !== 1 || (b === 0x2e && prev === 0x2e)) throw new Malformed("bad-server-name");
    s += String.fromCharCode(b >= 0x41 && b <= 0x5a ? b + 32 : b);
    prev = b;
  }
  if (prev === 0x2e) throw new Malformed("bad-server-name");
  return s;
}

/** server_name: a non-empty list; at most one host_name; other name types are skipped (RFC 6066 §3). */
function serverName(ext: Cursor): string {
  const list = ext.take(ext.u16());
  if (ext.remaining !== 0 || list.remaining === 0) throw new Malformed("bad-server-name");
  let name: string | null = null;
  while (list.remaining > 0) {
    const type = list.u8();
    const value = list.take(list.u16());
    if (type !== 0) continue;
    if (name !== null) throw new Malformed("bad-server-name");
    name = hostName(value);
  }
  if (name === null) throw new Malformed("bad-server-name");
  return name;
}

function offersTls13(ext: Cursor): boolean {
  const n = ext.u8();
  if (n < 2 || n % 2 !== 0 || ext.remaining !== n) throw new Malformed("bad-supported-versions");
  let found = false;
  for (let i = 0; i < n; i += 2) if (ext.u16() === TLS13) found = true;
  return found;
}

function parseBody(body: Uint8Array): ClientHello {
  const c = new Cursor(body, 0, body.length);
  const legacyVersion = c.u16();
  if (legacyVersion >> 8 !== 3) throw new Malformed("bad-version");
  c.skip(32); // random
  const sidLength = c.u8();
  if (sidLength > 32) throw new Malformed("bad-session-id");
  const sessionId = c.copy(sidLength);
  const suites = c.u16();
  if (suites < 2 || suites % 2 !== 0) throw new Malformed("bad-cipher-suites");
  c.skip(suites);
  const compression = c.u8();
  if (compression < 1) throw new Malformed("bad-compression");
  c.skip(compression);
  const hello: ClientHello = {
    legacyVersion,
    serverName: null,
    sessionId,
    sessionTicket: false,
    ticketLength: 0,
    preSharedKey: false,
    offersTls13: false,
  };
  // A hello without extensions is legal before TLS 1.3 (RFC 5246 §7.4.1.2).
  if (c.remaining === 0) return hello;
  if (c.u16() !== c.remaining) throw new Malformed("bad-extensions");
  const seen = new Set<number>();
  while (c.remaining > 0) {
    const type = c.u16();
    const ext = c.take(c.u16());
    if (seen.has(type)) throw new Malformed("duplicate-extension");
    seen.add(type);
    if (hello.preSharedKey) throw new Malformed("psk-not-last");
    switch (type) {
      case EXT_SERVER_NAME:
        hello.serverName = serverName(ext);
        break;
      case EXT_SESSION_TICKET:
        hello.sessionTicket = true;
        hello.ticketLength = ext.remaining;
        break;
      case EXT_PRE_SHARED_KEY:
        if (ext.remaining === 0) throw new Malformed("bad-extensions");
        hello.preSharedKey = true;
        break;
      case EXT_SUPPORTED_VERSIONS:
        hello.offersTls13 = offersTls13(ext);
        break;
    }
  }
  return hello;
}

/** Reads the ClientHello at the start of `buf` (the bytes a client sent so far). Never throws. */
export function parseClientHello(buf: Uint8Array): ClientHelloParse {
  const read = readFirstHandshake(buf, HANDSHAKE_CLIENT_HELLO, true);
  if (read.kind === "incomplete") return read;
  if (read.kind === "other-record") return { kind: "invalid", reason: "not-tls" };
  if (read.kind === "invalid") return read;
  try {
    return { kind: "hello", hello: parseBody(read.body) };
  } catch (e) {
    if (e instanceof Malformed) return { kind: "invalid", reason: e.reason };
    throw e;
  }
}
