/**
 * Strict HTTP/1.1 response parsing (RFC 9112) with no I/O: the connection
 * feeds bytes in, this module hands values back or throws HttpParseError.
 *
 * Strictness is what keeps a proxy's keep-alive connections in step with
 * the backend: anything two parsers could read differently (obs-fold, bare
 * CR or LF, conflicting lengths, Transfer-Encoding next to Content-Length,
 * unknown transfer codings) is refused rather than guessed at.
 */

export class HttpParseError extends Error {
  override readonly name = "HttpParseError";
}

export const HTAB = 0x09;
export const LF = 0x0a;
export const CR = 0x0d;
export const SP = 0x20;
export const COLON = 0x3a;
const SEMICOLON = 0x3b;

function byteTable(chars: string, from = 0, to = -1): Uint8Array {
  const table = new Uint8Array(256);
  for (let i = 0; i < chars.length; i++) table[chars.charCodeAt(i)] = 1;
  for (let b = from; b <= to; b++) table[b] = 1;
  return table;
}

/** tchar (RFC 9110 5.6.2): the bytes a field name may contain. */
export const TCHAR = byteTable(
  "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
);

/**
 * Bytes allowed inside a field value or reason phrase (RFC 9110 5.5,
 * RFC 9112 4): SP, HTAB, VCHAR and obs-text; never NUL, CR, LF or another CTL.
 */
export const FIELD_CHAR = (() => {
  const table = byteTable("\t ", 0x21, 0x7e);
  table.fill(1, 0x80, 0x100);
  return table;
})();

/** Hex digit values for chunk sizes (RFC 9112 7.1); -1 for anything else. */
const HEX = (() => {
  const table = new Int8Array(256).fill(-1);
  for (let d = 0; d < 10; d++) table[0x30 + d] = d;
  for (let d = 0; d < 6; d++) {
    table[0x41 + d] = 10 + d;
    table[0x61 + d] = 10 + d;
  }
  return table;
})();

type Latin1Slice = (this: Uint8Array, start: number, end: number) => string;
type BytesIndexOf = (this: Uint8Array, needle: Uint8Array, byteOffset: number) => number;

/**
 * Node's latin1Slice maps each byte to one UTF-16 code unit (true ISO-8859-1),
 * so byte offsets are string offsets. TextDecoder("latin1") is windows-1252
 * and would turn obs-text bytes 0x80-0x9F into other characters.
 */
export const latin1Slice = (Buffer.prototype as unknown as { latin1Slice: Latin1Slice }).latin1Slice;
/** Buffer's native substring search, applied to any Uint8Array. */
const bytesIndexOf = Buffer.prototype.indexOf as unknown as BytesIndexOf;

/**
 * Strings for byte runs that come message after message (common field
 * names, reason phrases, methods), found by a hash of the bytes taken while
 * a parser scans them and then checked in place: no string is sliced for
 * them. `fold` tables match any letter case and answer in lowercase;
 * the others match the spelling exactly.
 */
export const exactHash = (h: number, b: number): number => (Math.imul(h, 31) + b) | 0;
export const foldHash = (h: number, b: number): number => (Math.imul(h, 31) + (b | 0x20)) | 0;

export interface Spellings {
  readonly fold: boolean;
  readonly byHash: Map<number, string>;
}

export function spellings(words: readonly string[], fold: boolean): Spellings {
  const byHash = new Map<number, string>();
  const step = fold ? foldHash : exactHash;
  for (const word of words) {
    let h = 0;
    for (let i = 0; i < word.length; i++) h = step(h, word.charCodeAt(i));
    byHash.set(h, word);
  }
  return { fold, byHash };
}

/** The table's string for buf[start, end) (whose hash is `hash`), or undefined. */
export function spelled(table: Spellings, buf: Uint8Array, start: number, end: number, hash: number) {
  const word = table.byHash.get(hash);
  if (word === undefined || word.length !== end - start) return undefined;
  const mask = table.fold ? 0x20 : 0;
  for (let i = 0; i < word.length; i++)
    if (((buf[start + i] as number) | mask) !== word.charCodeAt(i)) return undefined;
  return word;
}

/** Response field names as servers commonly spell them. */
const RESPONSE_NAMES = spellings(
  [
    ...["content-type", "content-length", "date", "connection", "keep-alive", "transfer-encoding"],
    ...["cache-control", "set-cookie", "etag", "last-modified", "vary", "server", "location"],
    ...["Content-Type", "Content-Length", "Date", "Connection", "Keep-Alive", "Transfer-Encoding"],
    ...["Cache-Control", "Set-Cookie", "ETag", "Last-Modified", "Vary", "Server", "Location"],
  ],
  false,
);
const REASONS = spellings(["OK", "No Content", "Found", "Not Modified", "Not Found"], false);

const HEAD_END = Buffer.from("\r\n\r\n");
const LF_LF = Buffer.from("\n\n");

/**
 * Index just past the empty line that ends a response head (RFC 9112 2.1),
 * or -1 when more bytes are needed. A caller that accumulates bytes passes
 * `from` = previous length - 3 so nothing is scanned twice.
 */
export function findHeadEnd(buf: Uint8Array, from: number): number {
  const i = bytesIndexOf.call(buf, HEAD_END, from);
  if (i >= 0) return i + 4;
  // RFC 9112 2.2 lets a recipient accept a bare LF as a line end; we do not,
  // and say so now rather than wait for a CRLFCRLF that will never come.
  if (bytesIndexOf.call(buf, LF_LF, from) >= 0) throw new HttpParseError("bare LF in head");
  return -1;
}

export interface ResponseHead {
  /** 0 for HTTP/1.0, 1 for HTTP/1.1 (a later 1.x is handled as 1.1, RFC 9110 2.5). */
  minor: number;
  status: number;
  statusText: string;
  /** Field lines in order, names as sent, values without surrounding OWS. */
  headers: [string, string][];
  /** The backend's Content-Length, or null when it sent none. */
  contentLength: number | null;
  /** Transfer-Encoding: chunked (the only transfer coding accepted). */
  chunked: boolean;
  /** The connection must not carry another request (Connection: close, or HTTP/1.0: RFC 9112 9.3). */
  close: boolean;
}

/**
 * Parses the head in buf[start, end), where end is just past its final
 * CRLFCRLF (see findHeadEnd). The text is decoded once; names and values
 * are slices of it.
 */
export function parseResponseHead(buf: Uint8Array, start: number, end: number): ResponseHead {
  const text = latin1Slice.call(buf, start, end);
  const head: ResponseHead = {
    minor: 1,
    status: 0,
    statusText: "",
    headers: [],
    contentLength: null,
    chunked: false,
    close: false,
  };
  let i = parseStatusLine(buf, start, end, text, head);
  while (i < end && buf[i] !== CR) i = parseFieldLine(buf, i, end, start, text, head.headers);
  if (i + 2 !== end || buf[i + 1] !== LF) throw new HttpParseError("malformed end of head");
  interpretFraming(head);
  return head;
}

/** status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF (RFC 9112 4). */
function parseStatusLine(
  buf: Uint8Array,
  start: number,
  end: number,
  text: string,
  head: ResponseHead,
): number {
  if (end - start < 14 || !text.startsWith("HTTP/1."))
    throw new HttpParseError("not an HTTP/1.x status line");
  const minor = digit(buf, start + 7);
  const status = digit(buf, start + 9) * 100 + digit(buf, start + 10) * 10 + digit(buf, start + 11);
  if (minor < 0 || status < 100 || status > 599 || buf[start + 8] !== SP) {
    throw new HttpParseError("malformed status line");
  }
  let i = start + 12;
  let reasonStart = i;
  let hash = 0;
  // Some servers omit the SP before an empty reason; accepting that is harmless.
  if (buf[i] === SP) {
    reasonStart = ++i;
    while (i < end && FIELD_CHAR[buf[i] as number] === 1) hash = exactHash(hash, buf[i++] as number);
  }
  if (buf[i] !== CR || buf[i + 1] !== LF) throw new HttpParseError("malformed status line");
  head.minor = minor === 0 ? 0 : 1;
  head.status = status;
  head.statusText = spelled(REASONS, buf, reasonStart, i, hash) ?? text.slice(reasonStart - start, i - start);
  return i + 2;
}

function digit(buf: Uint8Array, i: number): number {
  const d = (buf[i] as number) - 0x30;
  return d >= 0 && d <= 9 ? d : -1000;
}

/**
 * field-line = field-name ":" OWS field-value OWS CRLF (RFC 9112 5).
 * A line starting with whitespace is obs-fold (5.2), whitespace before the
 * colon is forbidden (5.1): both are refused, as a gateway may do with 502.
 */
function parseFieldLine(
  buf: Uint8Array,
  i: number,
  end: number,
  offset: number,
  text: string,
  headers: [string, string][],
): number {
  const nameStart = i;
  let hash = 0;
  while (i < end && TCHAR[buf[i] as number] === 1) hash = exactHash(hash, buf[i++] as number);
  if (i === nameStart || buf[i] !== COLON) {
    const b = buf[nameStart];
    throw new HttpParseError(b === SP || b === HTAB ? "obs-fold in response head" : "invalid field name");
  }
  const nameEnd = i++;
  while (buf[i] === SP || buf[i] === HTAB) i++;
  const valueStart = i;
  while (i < end && FIELD_CHAR[buf[i] as number] === 1) i++;
  if (buf[i] !== CR || buf[i + 1] !== LF) throw new HttpParseError("invalid byte in field value");
  let valueEnd = i;
  while (valueEnd > valueStart && (buf[valueEnd - 1] === SP || buf[valueEnd - 1] === HTAB)) valueEnd--;
  headers.push([
    spelled(RESPONSE_NAMES, buf, nameStart, nameEnd, hash) ??
      text.slice(nameStart - offset, nameEnd - offset),
    text.slice(valueStart - offset, valueEnd - offset),
  ]);
  return i + 2;
}

/**
 * Reads the fields that decide message framing and connection reuse
 * (RFC 9112 6.1, 6.3, 9.3). Names are compared by length first, then
 * case-insensitively without allocating.
 */
function interpretFraming(head: ResponseHead): void {
  let chunkedCount = -1; // -1: no Transfer-Encoding field at all
  const headers = head.headers;
  for (let i = 0; i < headers.length; i++) {
    const field = headers[i] as [string, string];
    const name = field[0];
    if (name.length === 14 && equalsLower(name, 0, "content-length")) {
      head.contentLength = mergeContentLength(head.contentLength, field[1]);
    } else if (name.length === 17 && equalsLower(name, 0, "transfer-encoding")) {
      chunkedCount = Math.max(chunkedCount, 0) + countChunked(field[1]);
    } else if (name.length === 10 && equalsLower(name, 0, "connection") && hasToken(field[1], "close")) {
      head.close = true;
    }
  }
  if (head.minor === 0) head.close = true;
  if (chunkedCount === -1) return;
  // chunked applied exactly once (6.1); never in HTTP/1.0 (6.1: faulty framing).
  if (chunkedCount !== 1) throw new HttpParseError("invalid Transfer-Encoding");
  if (head.minor === 0) throw new HttpParseError("Transfer-Encoding in an HTTP/1.0 response");
  // 6.3 item 3 lets TE override CL but calls it a likely smuggling attempt;
  // a backend sending both is broken or attacked, so the response is refused.
  if (head.contentLength !== null) throw new HttpParseError("both Transfer-Encoding and Content-Length");
  head.chunked = true;
}

const MAX_LENGTH_DIGITS = 15; // keeps every value below 2^53

/**
 * Content-Length = 1*DIGIT; a list of identical values (or repeated
 * identical fields) is one value, differing ones are an error (RFC 9110 8.6,
 * RFC 9112 6.3 item 5).
 */
export function mergeContentLength(previous: number | null, value: string): number {
  let result = previous;
  for (const element of value.split(",")) {
    const s = trimOws(element);
    if (s.length === 0 || s.length > MAX_LENGTH_DIGITS) throw new HttpParseError("invalid Content-Length");
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      const d = s.charCodeAt(i) - 0x30;
      if (d < 0 || d > 9) throw new HttpParseError("invalid Content-Length");
      n = n * 10 + d;
    }
    if (result !== null && result !== n) throw new HttpParseError("conflicting Content-Length values");
    result = n;
  }
  return result as number;
}

/**
 * Counts "chunked" in a Transfer-Encoding list. Any other coding is refused:
 * after a proxy strips the hop-by-hop field the client could not decode it.
 */
export function countChunked(value: string): number {
  let count = 0;
  for (const element of value.split(",")) {
    const coding = trimOws(element);
    if (coding.length === 0) continue; // empty list elements are allowed (RFC 9110 5.6.1)
    if (coding.toLowerCase() !== "chunked") throw new HttpParseError("unsupported transfer coding");
    count++;
  }
  return count;
}

/**
 * Whether s, from offset on, equals `lower` (letters and "-" only) ignoring
 * ASCII case. OR-ing 0x20 lowercases a letter; the only other byte it maps
 * onto one of these is CR (onto "-"), which never occurs in a field.
 */
export function equalsLower(s: string, offset: number, lower: string): boolean {
  for (let i = 0; i < lower.length; i++) {
    if ((s.charCodeAt(offset + i) | 0x20) !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/** Whether a comma-separated list (RFC 9110 5.6.1) holds token, case-insensitively. */
export function hasToken(value: string, token: string): boolean {
  let start = 0;
  while (start <= value.length) {
    let end = value.indexOf(",", start);
    if (end < 0) end = value.length;
    let a = start;
    let b = end;
    while (a < b && (value.charCodeAt(a) === SP || value.charCodeAt(a) === HTAB)) a++;
    while (b > a && (value.charCodeAt(b - 1) === SP || value.charCodeAt(b - 1) === HTAB)) b--;
    if (b - a === token.length && equalsLower(value, a, token)) return true;
    start = end + 1;
  }
  return false;
}

/** Trims SP and HTAB only: String.prototype.trim would also eat obs-text such as 0xA0. */
export function trimOws(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && (s.charCodeAt(a) === SP || s.charCodeAt(a) === HTAB)) a++;
  while (b > a && (s.charCodeAt(b - 1) === SP || s.charCodeAt(b - 1) === HTAB)) b--;
  return a === 0 && b === s.length ? s : s.slice(a, b);
}

/**
 * How the response body is delimited (RFC 9112 6.3):
 * "none": HEAD responses, 1xx, 204, 304 and Content-Length: 0;
 * "length": Content-Length bytes; "chunked"; "close": until the connection closes.
 */
export type Framing = "none" | "length" | "chunked" | "close";

export function bodyFraming(head: ResponseHead, requestWasHead: boolean): Framing {
  const status = head.status;
  if (requestWasHead || status < 200 || status === 204 || status === 304) return "none";
  if (head.chunked) return "chunked";
  if (head.contentLength !== null) return head.contentLength === 0 ? "none" : "length";
  return "close";
}

// ChunkedDecoder states.
const SIZE_FIRST = 0; // first hex digit of a chunk-size
const SIZE = 1; // further hex digits
const SIZE_BWS = 2; // whitespace after the size, before ";"
const EXT = 3; // chunk-ext up to CR
const SIZE_LF = 4; // LF ending the size line
const DATA = 5;
const DATA_CR = 6;
const DATA_LF = 7;
const TRAILER_START = 8; // start of a trailer line, or the final CRLF
const TRAILER = 9;
const TRAILER_LF = 10;
const END_LF = 11; // LF of the final CRLF
const DONE = 12;

/** Bound on a chunk-size line (size and extensions), so a backend cannot make us buffer forever. */
const MAX_SIZE_LINE = 4096;
/** 2^48 bytes: larger chunk sizes are refused before they can lose precision. */
const MAX_CHUNK_SIZE = 2 ** 48;

/**
 * Incremental chunked decoder (RFC 9112 7.1). Payload pieces are views into
 * the input, not copies. Extensions are skipped and trailers discarded
 * (7.1.2 lets a recipient drop trailer fields); every line must end in CRLF.
 */
export class ChunkedDecoder {
  private state = SIZE_FIRST;
  private size = 0;
  private lineBytes = 0;
  private trailerBytes = 0;

  constructor(private readonly maxTrailerBytes = 64 * 1024) {}

  reset(): void {
    this.state = SIZE_FIRST;
    this.size = 0;
    this.lineBytes = 0;
    this.trailerBytes = 0;
  }

  /**
   * Decodes buf[start..], appending payload pieces to `out`. Returns the index
   * just past the end of the chunked body, or -1 when it needs more bytes.
   */
  decode(buf: Uint8Array, start: number, out: Uint8Array[]): number {
    let i = start;
    const len = buf.length;
    while (i < len) {
      if (this.state === DATA) {
        const n = Math.min(this.size, len - i);
        out.push(buf.subarray(i, i + n));
        i += n;
        this.size -= n;
        if (this.size === 0) this.state = DATA_CR;
        continue;
      }
      if (this.state === DONE) return i;
      this.step(buf[i] as number);
      i++;
      if (this.state === DONE) return i;
    }
    return this.state === DONE ? i : -1;
  }

  /** Advances the state machine by one framing byte. */
  private step(b: number): void {
    switch (this.state) {
      case SIZE_FIRST:
      case SIZE:
        this.sizeByte(b);
        return;
      case SIZE_BWS:
        this.countLine();
        if (b === SEMICOLON) this.state = EXT;
        else if (b !== SP && b !== HTAB) throw new HttpParseError("invalid chunk size line");
        return;
      case EXT:
        this.countLine();
        if (b === CR) this.state = SIZE_LF;
        else if (FIELD_CHAR[b] !== 1) throw new HttpParseError("invalid chunk extension");
        return;
      case SIZE_LF:
        this.expect(b, LF);
        this.lineBytes = 0;
        this.state = this.size === 0 ? TRAILER_START : DATA;
        return;
      case DATA_CR:
        this.expect(b, CR);
        this.state = DATA_LF;
        return;
      case DATA_LF:
        this.expect(b, LF);
        this.state = SIZE_FIRST;
        return;
      default:
        this.trailerByte(b);
    }
  }

  /** chunk-size = 1*HEXDIG, then BWS ";" extensions, or CRLF. */
  private sizeByte(b: number): void {
    this.countLine();
    const d = HEX[b] as number;
    if (d >= 0) {
      if (this.size >= MAX_CHUNK_SIZE / 16) throw new HttpParseError("chunk size too large");
      this.size = this.size * 16 + d;
      this.state = SIZE;
    } else if (this.state === SIZE_FIRST) {
      throw new HttpParseError("invalid chunk size");
    } else if (b === CR) {
      this.state = SIZE_LF;
    } else if (b === SEMICOLON) {
      this.state = EXT;
    } else if (b === SP || b === HTAB) {
      this.state = SIZE_BWS;
    } else {
      throw new HttpParseError("invalid chunk size");
    }
  }

  /** trailer-section = *( field-line CRLF ) CRLF, discarded but still checked for bare CR/LF. */
  private trailerByte(b: number): void {
    if (++this.trailerBytes > this.maxTrailerBytes) throw new HttpParseError("trailer section too large");
    switch (this.state) {
      case TRAILER_START:
        if (b === CR) this.state = END_LF;
        else if (TCHAR[b] === 1) this.state = TRAILER;
        else throw new HttpParseError("invalid trailer line");
        return;
      case TRAILER:
        if (b === CR) this.state = TRAILER_LF;
        else if (FIELD_CHAR[b] !== 1) throw new HttpParseError("invalid byte in trailer");
        return;
      case TRAILER_LF:
        this.expect(b, LF);
        this.state = TRAILER_START;
        return;
      default:
        this.expect(b, LF);
        this.state = DONE;
    }
  }

  private countLine(): void {
    if (++this.lineBytes > MAX_SIZE_LINE) throw new HttpParseError("chunk size line too long");
  }

  private expect(b: number, wanted: number): void {
    if (b !== wanted)
      throw new HttpParseError(wanted === LF ? "expected LF after CR" : "expected CRLF after chunk data");
  }
}
