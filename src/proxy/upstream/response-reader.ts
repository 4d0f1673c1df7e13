/**
 * Reads responses off a backend socket's bytes, pure: bytes in; the head, the
 * body's chunks and its end out, through a ResponseEvents sink. No socket,
 * timer or stream: connection.ts owns those and tells the reader when a
 * request went out (expect). Framing per RFC 9112 6.3 (parser.ts
 * bodyFraming); a body that arrives whole with its head skips the stream.
 */
import {
  bodyFraming,
  ChunkedDecoder,
  type Framing,
  findHeadEnd,
  HttpParseError,
  parseResponseHead,
  type ResponseHead,
} from "./parser.ts";

export const IDLE = 0; // no response expected
export const HEAD = 1; // waiting for the (final) response head
export const BODY = 2; // reading a streamed response body

export interface ResponseEvents {
  /** A final head whose body arrived with it, or that has none. `clean`: no byte followed the response. */
  responded(head: ResponseHead, body: Uint8Array | null, clean: boolean): void;
  /** A final head whose body streams: bodyChunk calls and bodyEnds follow. */
  bodyStarts(head: ResponseHead): void;
  bodyChunk(bytes: Uint8Array): void;
  /** The streamed body is complete. `clean`: no byte followed it. */
  bodyEnds(clean: boolean): void;
}

export class ResponseReader {
  state = IDLE;
  /** A byte of the current response arrived (a close before any is a reset, after one a broken head). */
  sawByte = false;
  framing: Framing = "none";
  private isHead = false;
  private partialHead: Uint8Array | null = null;
  private remaining = 0;
  private readonly decoder: ChunkedDecoder;
  private readonly pieces: Uint8Array[] = [];

  constructor(private readonly maxHeaderBytes: number) {
    this.decoder = new ChunkedDecoder(maxHeaderBytes);
  }

  /** A request went out on the socket: its response is next. A HEAD request's has no body. */
  expect(isHead: boolean): void {
    this.state = HEAD;
    this.isHead = isHead;
    this.sawByte = false;
    this.partialHead = null;
  }

  /** Nothing more is read for the current response (it ended, or the connection is gone). */
  reset(): void {
    this.state = IDLE;
    this.partialHead = null;
  }

  /** Reads bytes of the current response; throws HttpParseError for a malformed one. */
  push(buf: Uint8Array, events: ResponseEvents): void {
    if (this.state === HEAD) this.readHead(buf, 0, events);
    else if (this.state === BODY) this.readBody(buf, 0, events);
  }

  private readHead(buf: Uint8Array, start: number, events: ResponseEvents): void {
    this.sawByte = true;
    const max = this.maxHeaderBytes;
    for (;;) {
      let data = buf;
      let from = start;
      let headStart = start;
      let shift = 0; // data index + shift = buf index
      const partial = this.partialHead;
      if (partial !== null) {
        // The head spans reads. Only the first bytes of buf can end a head
        // within the limit, so only those are copied next to the partial one.
        const take = Math.min(buf.length, start + max + 1 - partial.length);
        data = Buffer.concat([partial, buf.subarray(start, take)]);
        from = Math.max(0, partial.length - 3);
        headStart = 0;
        shift = start - partial.length;
      }
      const end = findHeadEnd(data, from);
      if (end < 0 ? data.length - headStart > max : end - headStart > max) {
        throw new HttpParseError("response head too large");
      }
      if (end < 0) {
        this.partialHead = partial === null ? buf.subarray(start) : data;
        return;
      }
      this.partialHead = null;
      const head = parseResponseHead(data, headStart, end);
      if (head.status >= 200) {
        this.onFinalHead(head, buf, end + shift, events);
        return;
      }
      // 1xx responses are interim (RFC 9110 15.2): skip them, the final one
      // follows. 101 would switch protocols, which this client never asks for.
      if (head.status === 101) throw new HttpParseError("unexpected 101 Switching Protocols");
      start = end + shift;
      if (start === buf.length) return;
    }
  }

  /** Picks the body framing (RFC 9112 6.3); a body that already arrived whole skips the stream. */
  private onFinalHead(head: ResponseHead, buf: Uint8Array, next: number, events: ResponseEvents): void {
    const framing = bodyFraming(head, this.isHead);
    if (framing === "none") {
      this.state = IDLE;
      events.responded(head, null, next === buf.length);
      return;
    }
    if (framing === "length") {
      const length = head.contentLength as number;
      if (buf.length - next >= length) {
        this.state = IDLE;
        events.responded(head, buf.subarray(next, next + length), next + length === buf.length);
        return;
      }
      this.remaining = length;
    } else if (framing === "chunked") {
      this.decoder.reset();
      this.pieces.length = 0;
      const end = this.decoder.decode(buf, next, this.pieces);
      if (end >= 0) {
        this.state = IDLE;
        events.responded(head, joinPieces(this.pieces), end === buf.length);
        return;
      }
      next = buf.length;
    }
    this.framing = framing;
    this.state = BODY;
    events.bodyStarts(head);
    if (framing === "chunked") this.emitPieces(events);
    else if (next < buf.length) this.readBody(buf, next, events);
  }

  private readBody(buf: Uint8Array, start: number, events: ResponseEvents): void {
    if (this.framing === "chunked") {
      this.pieces.length = 0;
      const end = this.decoder.decode(buf, start, this.pieces);
      this.emitPieces(events);
      if (end >= 0) this.ended(end === buf.length, events);
    } else if (this.framing === "length") {
      const n = Math.min(this.remaining, buf.length - start);
      this.remaining -= n;
      if (n > 0) events.bodyChunk(buf.subarray(start, start + n));
      if (this.remaining === 0) this.ended(start + n === buf.length, events);
    } else if (start < buf.length) {
      events.bodyChunk(start === 0 ? buf : buf.subarray(start));
    }
  }

  /** A read-until-close body (RFC 9112 6.3 item 8) ends when the backend closes cleanly. */
  closedCleanly(events: ResponseEvents): boolean {
    if (this.state !== BODY || this.framing !== "close") return false;
    this.ended(false, events);
    return true;
  }

  private ended(clean: boolean, events: ResponseEvents): void {
    this.state = IDLE;
    events.bodyEnds(clean);
  }

  private emitPieces(events: ResponseEvents): void {
    for (const piece of this.pieces) if (piece.byteLength > 0) events.bodyChunk(piece);
    this.pieces.length = 0;
  }
}

function joinPieces(pieces: Uint8Array[]): Uint8Array | null {
  if (pieces.length === 0) return null;
  if (pieces.length === 1) return pieces[0] as Uint8Array;
  return Buffer.concat(pieces);
}
