/**
 * A request body on tether's HTTP/1.1 front end: the bytes after the head,
 * de-framed (Content-Length or chunked) into a ReadableStream the upstream
 * exchange reads. Backpressure runs to the client's socket: while the
 * stream's queue is full the connection stops reading.
 */
import { ChunkedDecoder } from "../../proxy/upstream/parser.ts";

/** What the body needs of its connection. */
export interface BodyReader {
  pauseReading(): void;
  resumeReading(): void;
}

/** Chunks queued before the socket is paused; the exchange takes one at a time. */
const QUEUED_CHUNKS = 8;

export class RequestBody {
  readonly stream: ReadableStream<Uint8Array>;
  /** The body arrived to its end (its last chunk, or its whole length). */
  done = false;
  private controller: ReadableStreamDefaultController<Uint8Array> | null = null;
  private readonly decoder: ChunkedDecoder | null;
  private remaining: number;
  private received = 0;
  private readonly pieces: Uint8Array[] = [];
  private cancelled = false;

  constructor(
    private readonly reader: BodyReader,
    /** The declared length, or null for a chunked body. */
    length: number | null,
    private readonly maxBytes: number,
  ) {
    this.decoder = length === null ? new ChunkedDecoder() : null;
    this.remaining = length ?? 0;
    this.stream = new ReadableStream<Uint8Array>(
      {
        start: (c) => {
          this.controller = c;
        },
        pull: () => this.reader.resumeReading(),
        cancel: () => {
          // The exchange stopped reading (it failed, or the backend answered early): the rest
          // is still de-framed, so the connection knows where the body ends, and dropped.
          this.cancelled = true;
          this.reader.resumeReading();
        },
      },
      new CountQueuingStrategy({ highWaterMark: QUEUED_CHUNKS }),
    );
  }

  /**
   * Takes the body's bytes from buf[start..]. Returns the index just past
   * the body's end (what follows is the next request), or -1 when it needs
   * more. Throws on a malformed chunked body or one over maxBytes; the
   * stream errors with the same error.
   */
  feed(buf: Uint8Array, start: number): number {
    try {
      return this.decoder === null ? this.feedLength(buf, start) : this.feedChunked(buf, start, this.decoder);
    } catch (e) {
      this.fail(e);
      throw e;
    }
  }

  /** The client went away or the request was refused before the body ended. */
  fail(reason: unknown): void {
    if (this.done) return;
    this.done = true;
    try {
      this.controller?.error(reason);
    } catch {
      // Already closed or errored.
    }
  }

  private feedLength(buf: Uint8Array, start: number): number {
    const n = Math.min(this.remaining, buf.length - start);
    if (n > 0) this.enqueue(buf.subarray(start, start + n));
    this.remaining -= n;
    if (this.remaining > 0) return -1;
    this.end();
    return start + n;
  }

  private feedChunked(buf: Uint8Array, start: number, decoder: ChunkedDecoder): number {
    const pieces = this.pieces;
    const end = decoder.decode(buf, start, pieces);
    for (const piece of pieces) {
      this.received += piece.length;
      if (this.received > this.maxBytes) throw new Error("request body too large");
      if (piece.length > 0) this.enqueue(piece);
    }
    pieces.length = 0;
    if (end === -1) return -1;
    this.end();
    return end;
  }

  private enqueue(piece: Uint8Array): void {
    if (this.cancelled) return;
    const c = this.controller as ReadableStreamDefaultController<Uint8Array>;
    c.enqueue(piece);
    if ((c.desiredSize ?? 1) <= 0) this.reader.pauseReading();
  }

  private end(): void {
    this.done = true;
    if (!this.cancelled) this.controller?.close();
  }
}
