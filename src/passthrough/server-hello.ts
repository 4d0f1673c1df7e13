/**
 * The backend's ServerHello, read from its first flight as it passes by
 * (never delaying it): the negotiated version and the session ID, which is
 * what the tls-session rule learns (RFC 5246 §7.4.1.3, RFC 8446 §4.1.3).
 *
 * Under TLS 1.2 and below a ServerHello that echoes the client's non-empty
 * session ID is a resumption; any other non-empty ID is a new session issued
 * by this backend. A TLS 1.3 ServerHello (and a HelloRetryRequest) says
 * legacy_version 0x0303 but selects 0x0304 in supported_versions, and its
 * session ID only echoes the client's random one: never learned.
 */
import { Cursor, type HelloError, Malformed, readFirstHandshake } from "./records.ts";

const HANDSHAKE_SERVER_HELLO = 2;
const EXT_SUPPORTED_VERSIONS = 43;

export interface ServerHello {
  /** The version in force: supported_versions' choice, else legacy_version. */
  version: number;
  /** Empty when the server issued none (for example a ticket-only server). */
  sessionId: Uint8Array;
}

export type ServerHelloParse =
  | { kind: "incomplete" }
  | { kind: "hello"; hello: ServerHello }
  /** The backend answered with something else first (an alert): nothing to learn. */
  | { kind: "not-hello" }
  | { kind: "invalid"; reason: HelloError };

function parseBody(body: Uint8Array): ServerHello {
  const c = new Cursor(body, 0, body.length);
  const legacy = c.u16();
  if (legacy >> 8 !== 3) throw new Malformed("bad-version");
  c.skip(32); // random (a HelloRetryRequest's is a fixed value; its supported_versions says 1.3 anyway)
  const sidLength = c.u8();
  if (sidLength > 32) throw new Malformed("bad-session-id");
  const sessionId = c.copy(sidLength);
  c.skip(3); // cipher_suite, compression_method
  let version = legacy;
  if (c.remaining === 0) return { version, sessionId };
  if (c.u16() !== c.remaining) throw new Malformed("bad-extensions");
  while (c.remaining > 0) {
    const type = c.u16();
    const ext = c.take(c.u16());
    if (type === EXT_SUPPORTED_VERSIONS) {
      if (ext.remaining !== 2) throw new Malformed("bad-supported-versions");
      version = ext.u16();
    }
  }
  return { version, sessionId };
}

/** Reads the ServerHello at the start of `buf` (the bytes the backend sent so far). Never throws. */
export function parseServerHello(buf: Uint8Array): ServerHelloParse {
  const read = readFirstHandshake(buf, HANDSHAKE_SERVER_HELLO, false);
  if (read.kind === "incomplete") return read;
  if (read.kind === "other-record") return { kind: "not-hello" };
  if (read.kind === "invalid") return read;
  try {
    return { kind: "hello", hello: parseBody(read.body) };
  } catch (e) {
    if (e instanceof Malformed) return { kind: "invalid", reason: e.reason };
    throw e;
  }
}

/**
 * The session ID to learn from a ServerHello, as hex, or null: TLS 1.2 and
 * below with a non-empty ID (new or echoed) only.
 */
export function learnableSessionId(hello: ServerHello): string | null {
  if (hello.version >= 0x0304 || hello.sessionId.length === 0) return null;
  return Buffer.from(hello.sessionId.buffer, hello.sessionId.byteOffset, hello.sessionId.length).toString(
    "hex",
  );
}
