/**
 * Strict HTTP/1.1 request head parsing (RFC 9112) with no I/O, for tether's
 * own HTTP/1.1 front end (server/h1/). Bytes in; the request line, the
 * fields (merged as Bun's Headers.toJSON merges them, so the forwarder reads
 * both front ends alike) and the body framing out, or a RequestHeadError
 * carrying the status to answer with.
 *
 * Whatever two parsers could read differently is refused, as the response
 * parser does (proxy/upstream/parser.ts, whose tables and list readers this
 * shares): obs-fold, bare CR or LF, whitespace before a colon, conflicting
 * lengths, Transfer-Encoding with Content-Length or in HTTP/1.0, codings
 * other than one final chunked.
 */
import type { FieldLookup } from "../../persistence/types.ts";
import type { FieldRecord } from "../../proxy/headers.ts";
import {
  COLON,
  CR,
  countChunked,
  exactHash,
  FIELD_CHAR,
  foldHash,
  HTAB,
  HttpParseError,
  hasToken,
  LF,
  latin1Slice,
  mergeContentLength,
  SP,
  spelled,
  spellings,
  TCHAR,
} from "../../proxy/upstream/parser.ts";

const SLASH = 0x2f;

export class RequestHeadError extends Error {
  override readonly name = "RequestHeadError";
  constructor(
    /** The status to answer with (400, 501 or 505); the connection closes after it. */
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A parsed request head; also what the forwarder reads of the request
 * (ClientRequest): the head is its own field lookup, and the connection
 * attaches the body's stream.
 */
export class RequestHead {
  /** The body's stream, attached by the connection; null: no body. */
  body: ReadableStream<Uint8Array> | null = null;
  /** The connection tells the request itself when the client leaves. */
  readonly signal = null;
  /** Expect: 100-continue with a body. */
  expectContinue = false;

  constructor(
    readonly method: string,
    /** Origin-form ("/path?query"); an absolute-form target loses its authority (Host decides). */
    readonly target: string,
    /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
    readonly minor: number,
    /** Lowercase names; repeated fields joined (Cookie with "; ", others ", "), Set-Cookie kept as a list. */
    readonly fields: FieldRecord,
    /** The declared body length, or null (chunked, or no body). */
    readonly contentLength: number | null,
    readonly chunked: boolean,
    /** The connection ends after this exchange (Connection: close, or HTTP/1.0 without keep-alive). */
    readonly close: boolean,
  ) {}

  /** The fields by name, as Headers.get answers. */
  get headers(): FieldLookup {
    return this;
  }

  /** Case-insensitive, as Headers.get is (rules name fields as users spell them). */
  get(name: string): string | null {
    const value = this.fields[name] ?? this.fields[name.toLowerCase()];
    if (value === undefined) return null;
    return typeof value === "string" ? value : value.join(", ");
  }
}

/**
 * Field names as clients spell them, lowercased once: a client sends the
 * same few names request after request. Bounded, as headers.ts's classifier is.
 */
const lowerNames = new Map<string, string>();
const LOWER_NAMES_MAX = 4096;

function lowerName(raw: string): string {
  const known = lowerNames.get(raw);
  if (known !== undefined) return known;
  const lower = raw.toLowerCase();
  if (lowerNames.size < LOWER_NAMES_MAX) lowerNames.set(raw, lower);
  return lower;
}

/**
 * The names nearly every request carries, found by the case-folded hash of
 * their bytes: no string is sliced or lowercased for them.
 */
const COMMON_NAMES = spellings(
  [
    ...["host", "cookie", "user-agent", "accept", "accept-encoding", "accept-language", "connection"],
    ...["content-length", "content-type", "transfer-encoding", "upgrade", "origin", "referer"],
    ...["authorization", "cache-control", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"],
    ...["forwarded", "x-request-id", "if-none-match", "if-modified-since"],
  ],
  true,
);
const METHODS = spellings(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"], false);

/**
 * Parses the head in buf[0, end), where end is just past its CRLFCRLF
 * (findHeadEnd). Throws RequestHeadError.
 */
export function parseRequestHead(buf: Uint8Array, end: number): RequestHead {
  const text = latin1Slice.call(buf, 0, end);
  let i = 0;
  // request-line = method SP request-target SP HTTP-version CRLF (RFC 9112 3)
  let hash = 0;
  while (i < end && TCHAR[buf[i] as number] === 1) hash = exactHash(hash, buf[i++] as number);
  if (i === 0 || buf[i] !== SP) throw new RequestHeadError(400, "invalid method");
  const method = spelled(METHODS, buf, 0, i, hash) ?? text.slice(0, i);
  const targetStart = ++i;
  while (i < end && (buf[i] as number) > SP && (buf[i] as number) < 0x7f) i++;
  if (i === targetStart || buf[i] !== SP) throw new RequestHeadError(400, "invalid request target");
  const rawTarget = text.slice(targetStart, i);
  i++;
  const minor = httpVersion(buf, i);
  i += 8;
  if (buf[i] !== CR || buf[i + 1] !== LF) throw new RequestHeadError(400, "invalid request line");
  i += 2;

  const fields: FieldRecord = {};
  let hosts = 0;
  let contentLength: number | null = null;
  let chunkedCount = -1; // -1: no Transfer-Encoding field
  let close = minor === 0;
  let expectContinue = false;
  while (i < end && buf[i] !== CR) {
    const nameStart = i;
    hash = 0;
    while (i < end && TCHAR[buf[i] as number] === 1) hash = foldHash(hash, buf[i++] as number);
    if (i === nameStart || buf[i] !== COLON) throw new RequestHeadError(400, "invalid field line");
    const name = spelled(COMMON_NAMES, buf, nameStart, i, hash) ?? lowerName(text.slice(nameStart, i));
    i++;
    while (buf[i] === SP || buf[i] === HTAB) i++;
    const valueStart = i;
    while (i < end && FIELD_CHAR[buf[i] as number] === 1) i++;
    if (buf[i] !== CR || buf[i + 1] !== LF) throw new RequestHeadError(400, "invalid byte in field value");
    let valueEnd = i;
    while (valueEnd > valueStart && (buf[valueEnd - 1] === SP || buf[valueEnd - 1] === HTAB)) valueEnd--;
    const value = text.slice(valueStart, valueEnd);
    i += 2;
    try {
      switch (name) {
        case "host":
          hosts++;
          break;
        case "content-length":
          contentLength = mergeContentLength(contentLength, value);
          break;
        case "transfer-encoding":
          chunkedCount = Math.max(chunkedCount, 0) + countChunked(value);
          break;
        case "connection":
          if (hasToken(value, "close")) close = true;
          else if (minor === 0 && hasToken(value, "keep-alive")) close = false;
          break;
        case "expect":
          expectContinue = hasToken(value, "100-continue");
          break;
      }
    } catch (e) {
      if (e instanceof HttpParseError) throw new RequestHeadError(400, e.message);
      throw e;
    }
    addField(fields, name, value);
  }
  if (i + 2 !== end || buf[i + 1] !== LF) throw new RequestHeadError(400, "malformed end of head");
  if (minor === 1 && hosts === 0) throw new RequestHeadError(400, "HTTP/1.1 request without Host");
  let chunked = false;
  if (chunkedCount !== -1) {
    // chunked exactly once, never in HTTP/1.0, never beside Content-Length (RFC 9112 6.1, 6.3).
    if (chunkedCount !== 1 || minor === 0 || contentLength !== null)
      throw new RequestHeadError(400, "invalid Transfer-Encoding");
    chunked = true;
  }
  const head = new RequestHead(
    method,
    originForm(method, rawTarget),
    minor,
    fields,
    contentLength,
    chunked,
    close,
  );
  head.expectContinue = expectContinue && (head.chunked || (contentLength ?? 0) > 0);
  return head;
}

/** "HTTP/1.0" or "HTTP/1.1" at buf[i]; any other version gets 505. */
function httpVersion(buf: Uint8Array, i: number): number {
  // "HTTP/1." in bytes
  if (
    buf[i] !== 0x48 ||
    buf[i + 1] !== 0x54 ||
    buf[i + 2] !== 0x54 ||
    buf[i + 3] !== 0x50 ||
    buf[i + 4] !== SLASH ||
    buf[i + 5] !== 0x31 ||
    buf[i + 6] !== 0x2e
  )
    throw new RequestHeadError(505, "unsupported HTTP version");
  const minor = (buf[i + 7] as number) - 0x30;
  if (minor !== 0 && minor !== 1) throw new RequestHeadError(505, "unsupported HTTP version");
  return minor;
}

/**
 * The target as a path: origin-form as it is, absolute-form without its
 * scheme and authority (RFC 9112 3.2.2: Host decides, as with Bun.serve),
 * authority-form only for CONNECT (the forwarder refuses it with 501);
 * asterisk-form and anything else get 400.
 */
function originForm(method: string, target: string): string {
  if (target.charCodeAt(0) === SLASH) return target;
  if (method === "CONNECT") return target;
  const scheme = target.indexOf("://");
  if (scheme > 0 && /^https?$/i.test(target.slice(0, scheme))) {
    const path = target.indexOf("/", scheme + 3);
    if (path === -1) {
      const query = target.indexOf("?", scheme + 3);
      return query === -1 ? "/" : `/${target.slice(query)}`;
    }
    return target.slice(path);
  }
  throw new RequestHeadError(400, "invalid request target");
}

function addField(fields: FieldRecord, name: string, value: string): void {
  const prior = fields[name];
  if (prior === undefined) {
    fields[name] = name === "set-cookie" ? [value] : value;
    return;
  }
  if (Array.isArray(prior)) prior.push(value);
  else fields[name] = `${prior}${name === "cookie" ? "; " : ", "}${value}`;
}

/**
 * A Host value that is a valid authority (RFC 9110 7.2: uri-host [":" port]),
 * as Bun.serve checks before it builds the URL. The forwarder answers 400
 * for one that is not.
 */
export function validAuthority(host: string): boolean {
  return AUTHORITY.test(host);
}

const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?$/;
