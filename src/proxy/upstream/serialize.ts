/**
 * Request serialization (RFC 9112 3, 6, 7.1), pure: strings and bytes out,
 * no I/O. Header values are Latin-1 strings (as Bun.serve hands them over),
 * so the head is encoded byte for byte with latin1, never UTF-8.
 */
import { ProxyError } from "../errors.ts";
import type { UpstreamRequest } from "./types.ts";

/** Methods whose requests carry content; without a body they get Content-Length: 0 (RFC 9110 8.6). */
const CONTENT_METHODS = new Set(["POST", "PUT", "PATCH"]);

/** The last-chunk and the empty trailer section that end a chunked body (RFC 9112 7.1). */
export const LAST_CHUNK: Uint8Array = Buffer.from("0\r\n\r\n");

/**
 * The request line, the headers verbatim, then the framing header chosen
 * from the body: Content-Length for known lengths, chunked for a stream of
 * unknown length, nothing for no body.
 */
export function serializeRequestHead(req: UpstreamRequest): string {
  // The pieces are joined once: appending line by line would make a string per piece.
  const fields = req.fields;
  const parts: string[] = new Array(fields.length * 2 + 6);
  let n = 0;
  parts[n++] = req.method;
  parts[n++] = " ";
  parts[n++] = req.target;
  parts[n++] = " HTTP/1.1\r\n";
  for (let i = 0; i < fields.length; i += 2) {
    parts[n++] = fields[i] as string;
    parts[n++] = ": ";
    parts[n++] = fields[i + 1] as string;
    parts[n++] = "\r\n";
  }
  const framing = framingHeader(req);
  parts[n++] = framing;
  parts[n++] = "\r\n";
  const head = parts.join("");
  // A CR or LF smuggled into the method, target or a field would start a
  // new line the backend reads as another header or another request.
  const lines = fields.length / 2 + (framing === "" ? 2 : 3);
  if (count(head, "\n") !== lines || count(head, "\r") !== lines) {
    throw new ProxyError("BAD_REQUEST", "CR or LF in the request line or a header");
  }
  if (req.method.includes(" ") || req.target.includes(" ")) {
    throw new ProxyError("BAD_REQUEST", "space in the method or request target");
  }
  return head;
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

function count(s: string, ch: string): number {
  let n = 0;
  for (let i = s.indexOf(ch); i !== -1; i = s.indexOf(ch, i + 1)) n++;
  return n;
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
