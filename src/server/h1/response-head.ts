/**
 * The client's response head on tether's HTTP/1.1 front end, written as
 * text from the backend's answer in one pass: the fields that go on to the
 * client (proxy/headers.ts decides which), the persistence rules' effects,
 * Date and Strict-Transport-Security when the backend sent none, and the
 * framing this connection uses for the body. Pure: no sockets.
 */
import type { Effect } from "../../persistence/types.ts";
import { applyEffects } from "../../proxy/client-response.ts";
import { clientResponseHeaders, listedInConnection, passesToClient } from "../../proxy/headers.ts";
import { equalsLower } from "../../proxy/upstream/parser.ts";
import type { UpstreamResponse } from "../../proxy/upstream/types.ts";

/**
 * How the body follows the head: "none" (HEAD, 204, 304, or no body),
 * "whole" (the body arrived whole, sent with its Content-Length), "length"
 * (a stream of the declared length), "chunked", or "close" (a stream of
 * unknown length to an HTTP/1.0 client: the end of the connection ends it).
 */
export type BodyFraming = "none" | "whole" | "length" | "chunked" | "close";

export interface ClientHeadOptions {
  method: string;
  /** The client's HTTP minor version (0 or 1). */
  minor: number;
  /** The connection closes after this response. */
  close: boolean;
  /** Strict-Transport-Security for an https listener, unless the backend sent its own. */
  hsts: string | null;
}

export interface ClientHead {
  /** The status line's parts. */
  status: number;
  statusText: string;
  /** The fields to send, flat (name, value, name, value ...), framing aside. */
  fields: string[];
  /** Content-Length to send, or null (chunked, close-delimited, or none for a 204). */
  length: number | null;
  framing: BodyFraming;
  /** The connection closes after this answer (asked, or forced by "close" framing). */
  close: boolean;
  /** An HTTP/1.0 client that asked to keep the connection is told it is kept (RFC 9112 9.3). */
  keepAlive: boolean;
}

export function clientResponseHead(
  res: UpstreamResponse,
  effects: readonly Effect[],
  opts: ClientHeadOptions,
): ClientHead {
  const status = res.status;
  const fields: string[] = [];
  let hasDate = false;
  let hasHsts = false;
  if (effects.length === 0) {
    const listed = listedInConnection(res.headers);
    for (const [name, value] of res.headers) {
      if (!passesToClient(name, listed)) continue;
      if (name.length === 4 && equalsLower(name, 0, "date")) hasDate = true;
      else if (name.length === 25 && equalsLower(name, 0, "strict-transport-security")) hasHsts = true;
      fields.push(name, value);
    }
  } else {
    // A new session or a refreshed cookie: the rules' effects need the Headers API (the slow path).
    const headers = clientResponseHeaders(res.headers);
    applyEffects(headers, effects);
    hasDate = headers.has("date");
    hasHsts = headers.has("strict-transport-security");
    for (const [name, value] of headers) fields.push(name, value);
  }
  if (!hasDate) fields.push("date", httpDate());
  if (opts.hsts !== null && !hasHsts) fields.push("strict-transport-security", opts.hsts);

  let framing: BodyFraming;
  let length: number | null = null;
  let close = opts.close;
  const body = res.body;
  if (opts.method === "HEAD" || status === 204 || status === 304) {
    if (status !== 204) length = res.contentLength;
    framing = "none";
  } else if (body instanceof Uint8Array) {
    length = body.length;
    framing = "whole";
  } else if (body === null) {
    length = 0;
    framing = "none";
  } else if (res.contentLength !== null) {
    length = res.contentLength;
    framing = "length";
  } else if (opts.minor === 1) {
    fields.push("transfer-encoding", "chunked");
    framing = "chunked";
  } else {
    framing = "close";
    close = true;
  }
  return {
    status,
    statusText: res.statusText,
    fields,
    length,
    framing,
    close,
    keepAlive: !close && opts.minor === 0,
  };
}

const CRLF = 0x0d0a;

/**
 * The head as bytes, followed by `body` when given, in one buffer: the
 * pieces are written straight in, so no string is built for the head.
 */
export function encodeHead(head: ClientHead, body: Uint8Array | null = null): Buffer {
  const { fields, length } = head;
  // "HTTP/1.1 200 " + reason + CRLF, the fields, the framing and connection lines, CRLF.
  let size = 13 + head.statusText.length + 2 + 2;
  for (let i = 0; i < fields.length; i += 2)
    size += (fields[i] as string).length + 2 + (fields[i + 1] as string).length + 2;
  if (length !== null) size += 16 + digits(length) + 2;
  if (head.close) size += 19;
  else if (head.keepAlive) size += 24;
  const out = Buffer.allocUnsafe(size + (body?.length ?? 0));
  let at = out.write("HTTP/1.1 ", 0, "latin1");
  at = writeNumber(out, at, head.status);
  out[at++] = 0x20;
  at += out.write(head.statusText, at, "latin1");
  at = out.writeUInt16BE(CRLF, at);
  for (let i = 0; i < fields.length; i += 2) {
    at += out.write(fields[i] as string, at, "latin1");
    out[at++] = 0x3a;
    out[at++] = 0x20;
    at += out.write(fields[i + 1] as string, at, "latin1");
    at = out.writeUInt16BE(CRLF, at);
  }
  if (length !== null) {
    at += out.write("content-length: ", at, "latin1");
    at = writeNumber(out, at, length);
    at = out.writeUInt16BE(CRLF, at);
  }
  if (head.close) at += out.write("connection: close\r\n", at, "latin1");
  else if (head.keepAlive) at += out.write("connection: keep-alive\r\n", at, "latin1");
  at = out.writeUInt16BE(CRLF, at);
  if (body !== null) out.set(body, at);
  return out;
}

function digits(n: number): number {
  let d = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    d++;
  }
  return d;
}

/** Writes n in decimal at `at`; returns the index after it. */
function writeNumber(out: Buffer, at: number, n: number): number {
  const end = at + digits(n);
  let i = end;
  do {
    out[--i] = 0x30 + (n % 10);
    n = Math.floor(n / 10);
  } while (n > 0);
  return end;
}

let dateSecond = 0;
let dateText = "";

/** The IMF-fixdate for now, made once a second. */
export function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}
