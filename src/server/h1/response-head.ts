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
  text: string;
  framing: BodyFraming;
  /** True when the framing forces the connection closed ("close"). */
  close: boolean;
}

export function clientResponseHead(
  res: UpstreamResponse,
  effects: readonly Effect[],
  opts: ClientHeadOptions,
): ClientHead {
  const status = res.status;
  let text = `HTTP/1.1 ${status} ${res.statusText}\r\n`;
  let hasDate = false;
  let hasHsts = false;
  if (effects.length === 0) {
    const listed = listedInConnection(res.headers);
    for (const [name, value] of res.headers) {
      if (!passesToClient(name, listed)) continue;
      if (name.length === 4 && equalsLower(name, 0, "date")) hasDate = true;
      else if (name.length === 25 && equalsLower(name, 0, "strict-transport-security")) hasHsts = true;
      text += `${name}: ${value}\r\n`;
    }
  } else {
    // A new session or a refreshed cookie: the rules' effects need the Headers API (the slow path).
    const headers = clientResponseHeaders(res.headers);
    applyEffects(headers, effects);
    hasDate = headers.has("date");
    hasHsts = headers.has("strict-transport-security");
    for (const [name, value] of headers) text += `${name}: ${value}\r\n`;
  }
  if (!hasDate) text += `date: ${httpDate()}\r\n`;
  if (opts.hsts !== null && !hasHsts) text += `strict-transport-security: ${opts.hsts}\r\n`;

  let framing: BodyFraming;
  let close = opts.close;
  const body = res.body;
  if (opts.method === "HEAD" || status === 204 || status === 304) {
    if (res.contentLength !== null && status !== 204) text += `content-length: ${res.contentLength}\r\n`;
    framing = "none";
  } else if (body instanceof Uint8Array) {
    text += `content-length: ${body.length}\r\n`;
    framing = "whole";
  } else if (body === null) {
    text += "content-length: 0\r\n";
    framing = "none";
  } else if (res.contentLength !== null) {
    text += `content-length: ${res.contentLength}\r\n`;
    framing = "length";
  } else if (opts.minor === 1) {
    text += "transfer-encoding: chunked\r\n";
    framing = "chunked";
  } else {
    framing = "close";
    close = true;
  }
  if (close) text += "connection: close\r\n";
  // An HTTP/1.0 client that asked to keep the connection is told it is kept (RFC 9112 9.3).
  else if (opts.minor === 0) text += "connection: keep-alive\r\n";
  return { text: `${text}\r\n`, framing, close };
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
