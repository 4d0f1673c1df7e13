/**
 * One client connection on tether's HTTP/1.1 front end: bytes in, request
 * heads parsed (request-head.ts) and handed to the listener one at a time,
 * bodies de-framed into streams (request-body.ts), answers written back in
 * order. Pipelined requests wait in the buffer until the one before is
 * answered; a body that was not read to its end, a client that asked to
 * close, or a refused head ends the connection after the answer.
 *
 * Timing is a deadline field checked by the listener's sweep, not a timer
 * per request: a connection waiting for a head (idle, or a head arriving
 * slowly) is closed at its deadline, as is one whose client stops reading
 * its answer.
 */
import type { Socket } from "bun";
import { findHeadEnd } from "../../proxy/upstream/parser.ts";
import { RequestBody } from "./request-body.ts";
import { parseRequestHead, type RequestHead, RequestHeadError } from "./request-head.ts";
import type { H1WebSocket } from "./websocket.ts";

export interface ConnectionSettings {
  /** Largest request head, 431 above it. */
  maxHeadBytes: number;
  /** Largest request body, 413 above it. */
  maxBodyBytes: number;
  /** How long a connection may wait for a complete head, or for its client to read. */
  idleMs: number;
  /** A WebSocket whose client sends nothing for this long is closed; halfway, it is pinged. */
  webSocketIdleMs: number;
}

/** What a connection asks of its listener. */
export interface ConnectionHandler {
  /** A complete head (its body streams in as it arrives). Answer with send() or sendError(). */
  request(conn: Connection, head: RequestHead): void;
  /** A head or body that cannot be read: answered with this status, then the connection closes. */
  refuse(conn: Connection, status: number): void;
}

/** Whoever waits on the connection's current request: told when the client leaves. */
export interface InFlight {
  clientGone(reason: unknown): void;
}

const AWAIT_HEAD = 0;
const BUSY = 1;
/** A WebSocket now: the bytes are frames (websocket.ts). */
const UPGRADED = 2;
const CLOSING = 3;
const CLOSED = 4;

const CONTINUE = Buffer.from("HTTP/1.1 100 Continue\r\n\r\n");
/** Pipelined bytes buffered beyond this (while a request is answered) stop the reading. */
const MAX_BUFFERED = 64 * 1024;

export class Connection {
  /** The listener's sweep closes the connection once performance.now() passes this; 0: never. */
  deadline = 0;
  /** The client asked to close, or the answer's framing needs it. */
  closeAfter = false;
  inFlight: InFlight | null = null;
  private state = AWAIT_HEAD;
  /** Bytes not yet parsed: a partial head, or requests pipelined behind the current one. */
  private pending: Uint8Array | null = null;
  private body: RequestBody | null = null;
  private readonly outbox: Uint8Array[] = [];
  private drainWaiter: (() => void) | null = null;
  private paused = false;
  private draining = false;
  private ws: H1WebSocket | null = null;
  /** The WebSocket's client was pinged for being quiet, and has not answered yet. */
  private pinged = false;
  /** A pipelined head, parsed once the answer before it is out (not from inside its write). */
  private readonly nextHeadSoon = () => {
    if (this.state === AWAIT_HEAD) this.nextHead();
  };

  constructor(
    readonly socket: Socket<Connection>,
    readonly peerIp: string,
    private readonly settings: ConnectionSettings,
    private readonly handler: ConnectionHandler,
  ) {
    this.deadline = performance.now() + settings.idleMs;
  }

  get busy(): boolean {
    return this.state === BUSY;
  }

  get closed(): boolean {
    return this.state === CLOSED;
  }

  get upgraded(): boolean {
    return this.state === UPGRADED;
  }

  /** Bytes written but not yet taken by the socket. */
  get buffered(): number {
    let n = 0;
    for (const chunk of this.outbox) n += chunk.length;
    return n;
  }

  /**
   * The request became a WebSocket: `head` (the 101 answer) goes out, and
   * from here on the bytes both ways are the socket's frames.
   */
  upgrade(ws: H1WebSocket, head: Uint8Array): void {
    if (this.state !== BUSY) return;
    this.write(head);
    this.state = UPGRADED;
    this.inFlight = null;
    this.deadline = performance.now() + this.settings.webSocketIdleMs / 2;
    this.ws = ws;
    ws.opened();
    const pending = this.pending;
    this.pending = null;
    if (pending !== null) ws.received(pending);
  }

  /** Bun's data callback. */
  received(chunk: Uint8Array): void {
    if (this.state >= CLOSING) return;
    if (this.ws !== null) {
      this.pinged = false;
      if (this.outbox.length === 0) this.deadline = performance.now() + this.settings.webSocketIdleMs / 2;
      this.ws.received(chunk);
      return;
    }
    let bytes = chunk;
    const body = this.body;
    if (body !== null && !body.done) {
      let end: number;
      try {
        end = body.feed(bytes, 0);
      } catch {
        // The body's stream carries the error to the request in flight, which answers it.
        this.closeAfter = true;
        this.pending = null;
        this.pauseReading();
        return;
      }
      if (end === -1) return;
      bytes = bytes.subarray(end);
      if (bytes.length === 0) return;
    }
    this.pending = this.pending === null ? bytes : concat(this.pending, bytes);
    if (this.state === AWAIT_HEAD) this.nextHead();
    else if (this.pending.length > MAX_BUFFERED) this.pauseReading();
  }

  /** Parses the buffered head, if complete, and starts its request. */
  private nextHead(): void {
    let buf = this.pending;
    if (buf === null) return;
    // A server ignores empty lines before a request line (RFC 9112 2.2).
    let skip = 0;
    while (skip + 1 < buf.length && buf[skip] === 0x0d && buf[skip + 1] === 0x0a) skip += 2;
    if (skip > 0) buf = buf.subarray(skip);
    let end: number;
    try {
      end = findHeadEnd(buf, 0);
    } catch {
      this.refuse(400);
      return;
    }
    const max = this.settings.maxHeadBytes;
    if (end === -1 ? buf.length > max : end > max) {
      this.refuse(431);
      return;
    }
    if (end === -1) {
      this.pending = buf.length === 0 ? null : buf;
      return;
    }
    let head: RequestHead;
    try {
      head = parseRequestHead(buf, end);
    } catch (e) {
      this.refuse(e instanceof RequestHeadError ? e.status : 400);
      return;
    }
    this.pending = end === buf.length ? null : buf.subarray(end);
    this.start(head);
  }

  private start(head: RequestHead): void {
    this.state = BUSY;
    this.deadline = 0;
    this.closeAfter = head.close || this.draining;
    if (head.contentLength !== null && head.contentLength > this.settings.maxBodyBytes) {
      this.refuse(413);
      return;
    }
    if (head.chunked || (head.contentLength ?? 0) > 0) {
      const body = new RequestBody(
        this,
        head.chunked ? null : head.contentLength,
        this.settings.maxBodyBytes,
      );
      this.body = body;
      head.body = body.stream;
      if (head.expectContinue) this.write(CONTINUE);
      const pending = this.pending;
      if (pending !== null) {
        this.pending = null;
        let end: number;
        try {
          end = body.feed(pending, 0);
        } catch {
          this.refuse(400);
          return;
        }
        if (end !== -1 && end < pending.length) this.pending = pending.subarray(end);
      }
    } else this.body = null;
    this.handler.request(this, head);
  }

  /** Answers with `bytes` and ends the exchange (the whole answer at once). */
  sendWhole(bytes: Uint8Array): void {
    if (this.state >= CLOSING) return;
    this.write(bytes);
    this.exchangeDone();
  }

  /**
   * Answers with `head`, then the stream's bytes (chunk-framed when asked),
   * waiting for the socket to take each before reading the next. Resolves
   * once the answer is written or the connection is gone.
   */
  async sendStream(head: Uint8Array, stream: ReadableStream<Uint8Array>, chunked: boolean): Promise<void> {
    this.write(head);
    const reader = stream.getReader();
    try {
      for (;;) {
        if (this.state >= CLOSING) {
          await reader.cancel(new Error("client connection closed"));
          return;
        }
        const { done, value } = await reader.read();
        if (done) break;
        if (value.length === 0) continue;
        if (chunked) this.write(Buffer.from(`${value.length.toString(16)}\r\n`, "latin1"));
        this.write(value);
        if (chunked) this.write(CRLF);
        if (this.outbox.length > 0) await this.drained();
      }
      if (chunked) this.write(LAST_CHUNK);
    } catch {
      // The backend's body broke off: the client must not take the answer as complete.
      this.terminate();
      return;
    }
    this.exchangeDone();
  }

  /** A head or body that cannot be read: a plain error answer, then the connection closes. */
  refuse(status: number): void {
    if (this.state >= CLOSING) return;
    if (this.state === UPGRADED) {
      // A WebSocket has no HTTP answer to give any more.
      this.terminate();
      return;
    }
    this.body?.fail(new Error(`request refused with ${status}`));
    this.closeAfter = true;
    this.state = BUSY;
    this.pending = null;
    this.handler.refuse(this, status);
  }

  /** The current request is answered: the next may start, unless the connection must end. */
  private exchangeDone(): void {
    this.inFlight = null;
    const body = this.body;
    this.body = null;
    if (this.closeAfter || (body !== null && !body.done)) {
      body?.fail(new Error("the request was answered before its body ended"));
      this.closeWhenFlushed();
      return;
    }
    this.state = AWAIT_HEAD;
    this.deadline = performance.now() + this.settings.idleMs;
    this.resumeReading();
    if (this.pending !== null) queueMicrotask(this.nextHeadSoon);
  }

  /** Writes what the socket takes now and keeps the rest for drain. */
  write(bytes: Uint8Array): void {
    if (this.state === CLOSED) return;
    if (this.outbox.length > 0) {
      this.outbox.push(bytes);
      return;
    }
    const n = this.socket.write(bytes);
    if (n < bytes.length) {
      this.outbox.push(bytes.subarray(Math.max(n, 0)));
      // A client that stops reading its answer is closed at the deadline.
      this.deadline = performance.now() + this.settings.idleMs;
    }
  }

  /** Bun's drain callback: the socket takes more. */
  flush(): void {
    const outbox = this.outbox;
    while (outbox.length > 0) {
      const chunk = outbox[0] as Uint8Array;
      const n = this.socket.write(chunk);
      if (n < chunk.length) {
        if (n > 0) outbox[0] = chunk.subarray(n);
        this.deadline = performance.now() + this.settings.idleMs;
        return;
      }
      outbox.shift();
    }
    if (this.state === UPGRADED) this.deadline = performance.now() + this.settings.webSocketIdleMs / 2;
    else if (this.state !== AWAIT_HEAD) this.deadline = 0;
    const waiter = this.drainWaiter;
    this.drainWaiter = null;
    waiter?.();
    if (this.state === CLOSING) this.socket.end();
    else if (this.state === UPGRADED) this.ws?.drained();
  }

  private drained(): Promise<void> {
    if (this.outbox.length === 0 || this.state === CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.drainWaiter = resolve;
    });
  }

  /** Ends the connection once what was written has gone out. */
  closeWhenFlushed(): void {
    if (this.state >= CLOSING) return;
    this.state = CLOSING;
    this.pending = null;
    if (this.outbox.length === 0) this.socket.end();
    else this.deadline = performance.now() + this.settings.idleMs;
  }

  /**
   * The listener's sweep: the deadline passed (no head in time, or a client
   * that stopped reading its answer). Closed with a FIN, so what the client
   * already received stays readable; its request, if any, is told.
   */
  expire(): void {
    if (this.state === UPGRADED && this.outbox.length === 0 && !this.pinged && this.ws !== null) {
      // Quiet for half the WebSocket idle time: a ping; a live client answers with a pong.
      this.pinged = true;
      this.deadline = performance.now() + this.settings.webSocketIdleMs / 2;
      this.ws.ping();
      return;
    }
    this.socket.end();
    this.gone(new Error("client idle past the deadline"));
  }

  /** Ends the connection at once (a broken answer, a stopped listener). */
  terminate(): void {
    if (this.state === CLOSED) return;
    this.socket.terminate();
    this.gone(new Error("connection closed"));
  }

  /**
   * The listener stopped accepting: the connection closes after the answer
   * it is giving, or after the next request it carries. An idle one is not
   * closed here, where a request may already be on its way (the listener's
   * stop(true) ends it once nothing is in flight, as Bun.serve does).
   */
  drain(): void {
    this.draining = true;
    if (this.state === BUSY) this.closeAfter = true;
  }

  /** Bun's close callback (or terminate): the client is gone. */
  gone(reason: unknown): void {
    if (this.state === CLOSED) return;
    this.state = CLOSED;
    this.deadline = 0;
    this.pending = null;
    this.outbox.length = 0;
    this.body?.fail(reason);
    this.body = null;
    const inFlight = this.inFlight;
    this.inFlight = null;
    inFlight?.clientGone(reason);
    this.ws?.gone();
    const waiter = this.drainWaiter;
    this.drainWaiter = null;
    waiter?.();
  }

  pauseReading(): void {
    if (this.paused || this.state >= CLOSING) return;
    this.paused = true;
    this.socket.pause();
  }

  resumeReading(): void {
    if (!this.paused || this.state >= CLOSING) return;
    this.paused = false;
    this.socket.resume();
  }
}

const CRLF = Buffer.from("\r\n");
const LAST_CHUNK = Buffer.from("0\r\n\r\n");

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
