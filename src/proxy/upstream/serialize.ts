/**
 * Request serialization (RFC 9112 3, 6, 7.1), pure: bytes out, no I/O. Header values are Latin-1 strings (as Bun.serve hands them over),
 * so the head is encoded byte for byte with latin1, never UTF-8.
 */
import { ProxyError } from "../errors.ts";
import type { UpstreamRequest } from "./types.ts";

/** Methods whose requests carry content; without a body they get Content-Length: 0 (RFC 9110 8.6). */
const CONTENT_METHODS = new Set(["POST", "PUT", "PATCH"]);

/** The last-chunk and the empty trailer section that end a chunked body (RFC 9112 7.1). */
export const LAST_CHUNK: Uint8Array = Buffer.from("0\r\n\r\n");

/**
 * The request head's length in bytes, once its pieces are checked: a CR or
 * LF smuggled into the method, target or a field would start a new line the
 * backend reads as another header or another request, and a space in the
 * method or target would shift the request line. Throws ProxyError.
 */
export function requestHeadLength(req: UpstreamRequest): number {
  if (breaksLine(req.method) || breaksLine(req.target))
    throw new ProxyError("BAD_REQUEST", "CR or LF in the request line or a header");
  if (req.method.includes(" ") || req.target.includes(" "))
    throw new ProxyError("BAD_REQUEST", "space in the method or request target");
  const fields = req.fields;
  // "METHOD SP target SP HTTP/1.1 CRLF", each "name: value CRLF", the framing line, CRLF.
  let length = req.method.length + 1 + req.target.length + 11 + framingHeader(req).length + 2;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i] as string;
    const value = fields[i + 1] as string;
    if (breaksLine(name) || breaksLine(value))
      throw new ProxyError("BAD_REQUEST", "CR or LF in the request line or a header");
    length += name.length + 2 + value.length + 2;
  }
  return length;
}

/**
 * Writes the request line, the headers verbatim, then the framing header
 * chosen from the body (Content-Length for known lengths, chunked for a
 * stream of unknown length, nothing for no body) into out at `at`, as
 * Latin-1 bytes; call requestHeadLength first. Returns the index after it.
 * No string is built for the head.
 */
export function writeRequestHead(req: UpstreamRequest, out: Buffer, at: number): number {
  let i = at + out.write(req.method, at, "latin1");
  out[i++] = 0x20;
  i += out.write(req.target, i, "latin1");
  i += out.write(" HTTP/1.1\r\n", i, "latin1");
  const fields = req.fields;
  for (let f = 0; f < fields.length; f += 2) {
    i += out.write(fields[f] as string, i, "latin1");
    out[i++] = 0x3a;
    out[i++] = 0x20;
    i += out.write(fields[f + 1] as string, i, "latin1");
    out[i++] = 0x0d;
    out[i++] = 0x0a;
  }
  i += out.write(framingHeader(req), i, "latin1");
  out[i++] = 0x0d;
  out[i++] = 0x0a;
  return i;
}

/** The request head as a string (the WebSocket handshake, tests). */
export function serializeRequestHead(req: UpstreamRequest): string {
  const out = Buffer.allocUnsafe(requestHeadLength(req));
  writeRequestHead(req, out, 0);
  return out.toString("latin1");
}

function breaksLine(s: string): boolean {
  return s.indexOf("\n") !== -1 || s.indexOf("\r") !== -1;
}

function framingHeader(req: UpstreamRequest): string {
  const body = req.body;
  if (body === null) return CONTENT_METHODS.has(req.method) ? "Content-Length: 0\r\n" : "";
  if (body instanceof Uint8Array) {
    if (req.bodyLength !== null && req.bodyLength !== body.byteLength) {
      throw new ProxyError("BAD_REQUEST", "bodyLength does not match the body");
    }
    return `Content-Length: ${body.byteLength}\r\n`;
  }
  return req.bodyLength === null ? "Transfer-Encoding: chunked\r\n" : `Content-Length: ${req.bodyLength}\r\n`;
}

/** False when the request itself asks the backend to close the connection (RFC 9112 9.6). */
export function requestAllowsReuse(req: UpstreamRequest): boolean {
  const fields = req.fields;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i] as string;
    if (
      name.length === 10 &&
      name.toLowerCase() === "connection" &&
      /(^|[ \t,])close([ \t,]|$)/i.test(fields[i + 1] as string)
    ) {
      return false;
    }
  }
  return true;
}

/** One chunk of a chunked body: size in hex, CRLF, data, CRLF (RFC 9112 7.1), as one buffer for one write. */
export function frameChunk(data: Uint8Array): Uint8Array {
  const size = data.byteLength.toString(16);
  const out = Buffer.allocUnsafe(size.length + data.byteLength + 4);
  out.write(size, 0, "latin1");
  let i = size.length;
  out[i++] = 0x0d;
  out[i++] = 0x0a;
  out.set(data, i);
  i += data.byteLength;
  out[i++] = 0x0d;
  out[i] = 0x0a;
  return out;
}
