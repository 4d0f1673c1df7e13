/**
 * Just enough of the TLS record layer to read the first handshake message of
 * a connection (a ClientHello or a ServerHello) without decrypting anything.
 * Pure functions of the bytes received so far: the caller appends what
 * arrives and asks again.
 *
 * A handshake message may be split across records and a record across TCP
 * segments (RFC 8446 §5.1, RFC 5246 §6.2.1); both are reassembled here,
 * within MAX_HELLO_BYTES. Everything else about the bytes is checked as soon
 * as it arrives, so garbage is refused on its first byte rather than after a
 * timeout.
 */

/** The most bytes (record headers included) read while looking for a hello. */
export const MAX_HELLO_BYTES = 16 * 1024;

const RECORD_HEADER = 5;
/** TLSPlaintext.length MUST NOT exceed 2^14 (RFC 8446 §5.1). */
const MAX_RECORD = 1 << 14;
export const CONTENT_HANDSHAKE = 22;

/** Why some bytes are not the hello we wait for. Stable strings: they are audited and counted. */
export type HelloError =
  | "not-tls" // first record is not a TLS handshake record (HTTP, SSH, SSLv2, random bytes)
  | "bad-record" // empty or oversized record, or a record version that is not 3.x
  | "interleaved-record" // another content type between the hello's fragments
  | "unexpected-message" // a handshake message other than the hello expected
  | "too-large" // the hello would not fit in MAX_HELLO_BYTES
  | "truncated" // a length field points past the end of its container
  | "bad-version" // hello legacy_version is not 3.x
  | "bad-session-id" // longer than 32 bytes
  | "bad-cipher-suites"
  | "bad-compression"
  | "bad-extensions" // extension block length does not match, or trailing bytes
  | "duplicate-extension" // RFC 8446 §4.2: at most one extension of each type
  | "bad-server-name" // RFC 6066 §3: malformed list, duplicate host_name, or a name that is not a DNS name
  | "psk-not-last" // RFC 8446 §4.2.11: pre_shared_key MUST be the last extension
  | "bad-supported-versions";

/** Thrown inside the parsers only; never escapes them. Not an Error, so no stack is captured. */
export class Malformed {
  constructor(readonly reason: HelloError) {}
}

/** A bounds-checked reader over a byte range. Every read past `end` throws Malformed("truncated"). */
export class Cursor {
  constructor(
    readonly buf: Uint8Array,
    public pos: number,
    readonly end: number,
  ) {}

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number): void {
    if (this.pos + n > this.end) throw new Malformed("truncated");
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++] as number;
  }

  u16(): number {
    this.need(2);
    const v = ((this.buf[this.pos] as number) << 8) | (this.buf[this.pos + 1] as number);
    this.pos += 2;
    return v;
  }

  skip(n: number): void {
    this.need(n);
    this.pos += n;
  }

  /** The next `n` bytes as a cursor of their own; this one moves past them. */
  take(n: number): Cursor {
    this.need(n);
    const c = new Cursor(this.buf, this.pos, this.pos + n);
    this.pos += n;
    return c;
  }

  /** A copy of the next `n` bytes (kept after the input buffer is gone). */
  copy(n: number): Uint8Array {
    this.need(n);
    const out = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

export type HandshakeRead =
  | { kind: "incomplete" }
  /** `body` is the message without its 4-byte header. */
  | { kind: "message"; body: Uint8Array }
  /** The first record is not a handshake record (for a server: usually an alert). */
  | { kind: "other-record"; contentType: number }
  | { kind: "invalid"; reason: HelloError };

const INCOMPLETE: HandshakeRead = { kind: "incomplete" };
const invalid = (reason: HelloError): HandshakeRead => ({ kind: "invalid", reason });

/**
 * Reassembles the first handshake message in `buf`, which must be of type
 * `msgType` (1 ClientHello, 2 ServerHello). `strictFirst`: a first record of
 * another content type is invalid rather than "other-record".
 */
export function readFirstHandshake(
  buf: Uint8Array,
  msgType: number,
  strictFirst: boolean,
  limit = MAX_HELLO_BYTES,
): HandshakeRead {
  // Fragment [start, end) ranges of the message bytes, in order.
  const starts: number[] = [];
  const ends: number[] = [];
  let collected = 0;
  let total = -1; // header + body, once the 24-bit length has arrived
  let off = 0;
  // The byte at logical message offset i (i < collected).
  const at = (i: number): number => {
    for (let f = 0; f < starts.length; f++) {
      const s = starts[f] as number;
      const len = (ends[f] as number) - s;
      if (i < len) return buf[s + i] as number;
      i -= len;
    }
    return 0;
  };
  for (;;) {
    const have = buf.length - off;
    if (have < 1) return INCOMPLETE;
    const type = buf[off] as number;
    if (type !== CONTENT_HANDSHAKE) {
      if (off !== 0) return invalid("interleaved-record");
      return strictFirst ? invalid("not-tls") : { kind: "other-record", contentType: type };
    }
    if (have < 2) return INCOMPLETE;
    if (buf[off + 1] !== 3) return invalid(off === 0 ? "not-tls" : "bad-record");
    if (have < RECORD_HEADER) return INCOMPLETE;
    const len = ((buf[off + 3] as number) << 8) | (buf[off + 4] as number);
    if (len === 0 || len > MAX_RECORD) return invalid("bad-record");
    const start = off + RECORD_HEADER;
    const end = Math.min(start + len, buf.length);
    if (end > start) {
      starts.push(start);
      ends.push(end);
      if (collected === 0 && (buf[start] as number) !== msgType) return invalid("unexpected-message");
      collected += end - start;
    }
    if (total < 0 && collected >= 4) {
      total = 4 + ((at(1) << 16) | (at(2) << 8) | at(3));
      if (total + RECORD_HEADER > limit) return invalid("too-large");
    }
    if (total >= 0 && collected >= total)
      return { kind: "message", body: assemble(buf, starts, ends, total) };
    if (start + len > buf.length) {
      // The record is not all here yet; give up early once it cannot fit.
      return start + len > limit ? invalid("too-large") : INCOMPLETE;
    }
    off = start + len;
    if (off >= limit) return invalid("too-large");
  }
}

/** The message body (header stripped): a view when it sits in one record, else a copy. */
function assemble(buf: Uint8Array, starts: number[], ends: number[], total: number): Uint8Array {
  const first = starts[0] as number;
  if (first + total <= (ends[0] as number)) return buf.subarray(first + 4, first + total);
  const out = new Uint8Array(total);
  let n = 0;
  for (let f = 0; f < starts.length && n < total; f++) {
    const s = starts[f] as number;
    const take = Math.min((ends[f] as number) - s, total - n);
    out.set(buf.subarray(s, s + take), n);
    n += take;
  }
  return out.subarray(4);
}
