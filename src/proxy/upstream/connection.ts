/**
 * One backend socket (Bun.connect): connecting, writing a request with
 * partial-write handling, handing the bytes it reads to the response reader
 * (response-reader.ts) and acting on what it finds, and deciding whether the
 * socket may carry another request. Socket handlers are shared
 * module-level objects; per-socket state is the Conn in socket.data.
 */
import type { Socket } from "bun";
import { ProxyError, type ProxyErrorCode } from "../errors.ts";
import { BodySource } from "./body-source.ts";
import type { Exchange } from "./exchange.ts";
import { HttpParseError, type ResponseHead } from "./parser.ts";
import type { Pooled } from "./pool.ts";
import { BODY, HEAD, IDLE, type ResponseEvents, ResponseReader } from "./response-reader.ts";
import { writeRequestHead } from "./serialize.ts";
import { connectSocket, errorDetail } from "./socket.ts";
import type { UpstreamRequest, UpstreamResponse, UpstreamTarget } from "./types.ts";

/** What a connection needs from the client that owns it. */
export interface ConnOwner {
  readonly maxHeaderBytes: number;
  /** The exchange finished cleanly and the socket may be reused. */
  release(conn: Conn): void;
  /** An idle connection closed or misbehaved: drop it from the pool. */
  forget(conn: Conn): void;
  /** Send the exchange again on a fresh connection (stale pooled socket). */
  retry(ex: Exchange): void;
}

const CONNECTING = 0;
const READY = 1; // TCP connected and, for TLS, handshake done
const CLOSED = 2;

/** Response body bytes queued in the stream before the socket is paused. */
const BODY_HIGH_WATER = 64 * 1024;
const bodyStrategy: QueuingStrategy<Uint8Array> = {
  highWaterMark: BODY_HIGH_WATER,
  size: (chunk) => (chunk as Uint8Array).byteLength,
};

/** Request bodies up to this size go out in the same write as the head. */
const COALESCE_LIMIT = 16 * 1024;
/** Reused buffer for encoding request heads; copied only if the socket cannot take it all. */
const scratch = Buffer.allocUnsafe(64 * 1024);

type Timer = ReturnType<typeof setTimeout>;

export class Conn implements Pooled, ResponseEvents {
  socket: Socket<Conn> | null = null;
  ex: Exchange | null = null;
  idleSince = 0;
  /** The current exchange got this connection from the idle pool. */
  fromPool = false;
  private state = CONNECTING;
  /** The connect timer. */
  private timer: Timer | null = null;
  /**
   * The response-head deadline (performance.now() ms; 0: not waiting). One
   * timer per connection outlives its requests and is re-armed only when it
   * fires before the current deadline: most responses beat it, and a timer
   * per request costs a native call to set and another to clear.
   */
  private responseDue = 0;
  private responseTimer: Timer | null = null;
  private responseTimerAt = 0;
  private readonly outbox: Uint8Array[] = [];
  private requestEnded = false;
  private requestWritten = false;
  private waiter: (() => void) | null = null;
  /** The response side, bytes in and events out (response-reader.ts). */
  private readonly reader: ResponseReader;
  private keepAlive = false;
  private body: BodySource | null = null;
  private paused = false;

  constructor(
    private readonly owner: ConnOwner,
    readonly key: string,
  ) {
    this.reader = new ResponseReader(owner.maxHeaderBytes);
  }

  /** True while the socket can carry a request (checked when taken from the pool). */
  get usable(): boolean {
    return this.state === READY && this.socket?.readyState === 1;
  }

  connect(target: UpstreamTarget, timeoutMs: number): void {
    if (timeoutMs > 0) this.timer = setTimeout(connectTimedOut, timeoutMs, this);
    connectSocket(target, this);
  }

  attach(ex: Exchange, fromPool: boolean): void {
    this.ex = ex;
    ex.conn = this;
    this.fromPool = fromPool;
    this.requestEnded = false;
    this.requestWritten = false;
    this.reader.expect(ex.isHead);
    this.keepAlive = ex.reuse;
    ex.writeRequest(this);
  }

  // --- writing -------------------------------------------------------------

  /** Queues the request head, written straight into the scratch buffer, with a small body in the same write. */
  writeHead(req: UpstreamRequest, headLength: number, body: Uint8Array | null): void {
    const bodyLength = body === null ? 0 : body.byteLength;
    if (bodyLength <= COALESCE_LIMIT && headLength + bodyLength <= scratch.length) {
      const n = writeRequestHead(req, scratch, 0);
      if (body !== null) scratch.set(body, n);
      this.write(scratch.subarray(0, n + bodyLength), true);
      return;
    }
    const head = Buffer.allocUnsafe(headLength);
    writeRequestHead(req, head, 0);
    this.write(head);
    if (body !== null) this.write(body);
  }

  /**
   * Writes what the socket takes now and queues the rest for drain; true
   * when everything went out. `transient` bytes (the scratch buffer) are
   * copied before being queued.
   */
  write(bytes: Uint8Array, transient = false): boolean {
    let written = 0;
    if (this.state === READY && this.outbox.length === 0) {
      written = Math.max(0, (this.socket as Socket<Conn>).write(bytes));
      if (written === bytes.byteLength) return true;
    }
    // A copy for transient bytes: Buffer's slice() is a view, and the scratch buffer is reused by the next request.
    if (this.state !== CLOSED)
      this.outbox.push(transient ? new Uint8Array(bytes.subarray(written)) : bytes.subarray(written));
    return false;
  }

  /** The whole request is queued; the response timeout starts once it is on the wire. */
  endRequest(): void {
    this.requestEnded = true;
    if (this.state === READY && this.outbox.length === 0) this.markWritten();
  }

  /** Resolves when the queued bytes went out, or the connection closed. */
  drained(): Promise<void> {
    if (this.state === CLOSED || (this.state === READY && this.outbox.length === 0)) return Promise.resolve();
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  private flush(): void {
    const socket = this.socket as Socket<Conn>;
    const outbox = this.outbox;
    while (outbox.length > 0) {
      const chunk = outbox[0] as Uint8Array;
      const n = socket.write(chunk);
      if (n < chunk.byteLength) {
        if (n > 0) outbox[0] = chunk.subarray(n);
        return;
      }
      outbox.shift();
    }
    this.wake();
    if (this.requestEnded && !this.requestWritten) this.markWritten();
  }

  private markWritten(): void {
    this.requestWritten = true;
    const ms = this.ex?.opts.responseTimeoutMs ?? 0;
    if (ms > 0 && this.reader.state === HEAD) {
      this.responseDue = performance.now() + ms;
      if (this.responseTimer === null || this.responseTimerAt > this.responseDue) this.armResponseTimer(ms);
    }
  }

  private armResponseTimer(ms: number): void {
    if (this.responseTimer !== null) clearTimeout(this.responseTimer);
    this.responseTimerAt = performance.now() + ms;
    this.responseTimer = setTimeout(responseTimerFired, ms, this);
    this.responseTimer.unref();
  }

  responseTimerFired(): void {
    this.responseTimer = null;
    if (this.responseDue === 0) return;
    const left = this.responseDue - performance.now();
    if (left > 0) this.armResponseTimer(Math.ceil(left));
    else this.fail("RESPONSE_TIMEOUT");
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }

  // --- reading -------------------------------------------------------------

  /** ResponseEvents: a final head, its body (if any) with it. */
  responded(head: ResponseHead, body: Uint8Array | null, clean: boolean): void {
    this.clearTimer();
    if (head.close) this.keepAlive = false;
    (this.ex as Exchange).respond(toResponse(head, body), null);
    this.finish(clean);
  }

  /** ResponseEvents: a final head whose body streams. */
  bodyStarts(head: ResponseHead): void {
    this.clearTimer();
    if (head.close) this.keepAlive = false;
    // A body read until close (RFC 9112 6.3 item 8) leaves nothing to reuse.
    if (this.reader.framing === "close") this.keepAlive = false;
    const ex = this.ex as Exchange;
    const source = new BodySource(this, ex);
    this.body = source;
    ex.respond(toResponse(head, new ReadableStream(source, bodyStrategy)), source);
  }

  /** ResponseEvents: body bytes. */
  bodyChunk(bytes: Uint8Array): void {
    this.enqueue(bytes);
  }

  /** ResponseEvents: the streamed body is complete. */
  bodyEnds(clean: boolean): void {
    this.endBody(clean);
  }

  /** Queues body bytes; a full queue pauses the socket until the consumer pulls. */
  private enqueue(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    const controller = (this.body as BodySource).controller;
    controller.enqueue(chunk);
    if (!this.paused && (controller.desiredSize ?? 0) <= 0) {
      this.paused = true;
      this.socket?.pause();
    }
  }

  /** BodySource.pull: the consumer wants more. */
  resumeFor(source: BodySource): void {
    if (this.body !== source || !this.paused) return;
    this.paused = false;
    this.socket?.resume();
  }

  private endBody(clean: boolean): void {
    (this.body as BodySource).controller.close();
    (this.ex as Exchange).complete();
    this.finish(clean);
  }

  /**
   * The response is complete. The socket is reused only if both sides allow
   * keep-alive, the request went out whole and no byte followed the
   * response (extra bytes mean the backend and we disagree on framing).
   * Otherwise it closes: gracefully if the exchange ended in step, with a
   * reset if not (a backend that stopped reading our upload would never see
   * a FIN queued behind it).
   */
  private finish(clean: boolean): void {
    this.ex = null;
    this.body = null;
    this.reader.reset();
    if (this.paused) {
      this.paused = false;
      this.socket?.resume();
    }
    const inStep = clean && this.requestWritten;
    if (inStep && this.keepAlive && this.state === READY) this.owner.release(this);
    else if (inStep) this.close();
    else this.destroy();
  }

  // --- socket events -------------------------------------------------------

  onOpen(socket: Socket<Conn>, ready: boolean): void {
    // Timed out or aborted while connecting: a late socket is closed, not leaked.
    if (this.state === CLOSED) {
      socket.terminate();
      return;
    }
    this.socket = socket;
    if (ready) this.onReady();
  }

  onHandshake(socket: Socket<Conn>, success: boolean, authError: Error | null): void {
    if (this.state === CLOSED) socket.terminate();
    else if (success) this.onReady();
    else this.fail("CONNECT_FAILED", `TLS: ${errorDetail(authError)}`);
  }

  private onReady(): void {
    this.clearTimer();
    this.state = READY;
    (this.socket as Socket<Conn>).setNoDelay(true);
    this.flush();
  }

  onConnectError(error: Error): void {
    if (this.state === CLOSED) return;
    const code = (error as { code?: string }).code;
    this.fail(code === "ETIMEDOUT" ? "CONNECT_TIMEOUT" : "CONNECT_FAILED", errorDetail(error));
  }

  onData(buf: Uint8Array): void {
    const ex = this.ex;
    if (ex === null || this.reader.state === IDLE) {
      // Bytes no request asked for: the connection is out of step.
      this.owner.forget(this);
      this.destroy();
      return;
    }
    try {
      this.reader.push(buf, this);
    } catch (err) {
      if (!(err instanceof HttpParseError)) throw err;
      this.fail("BAD_RESPONSE", err.message);
    }
  }

  onDrain(): void {
    if (this.state === READY) this.flush();
  }

  /** Bun reports a handler that threw, or a failed TLS session; either way the socket is done. */
  onError(error: Error): void {
    const socket = this.socket;
    this.onClose(error);
    socket?.terminate();
  }

  /** Closed by the peer: FIN (no error) or reset (error). */
  onClose(error?: Error): void {
    if (this.state === CLOSED) return;
    const wasReady = this.state === READY;
    this.state = CLOSED;
    this.clearTimer();
    this.outbox.length = 0;
    this.wake();
    const ex = this.ex;
    if (ex === null) this.owner.forget(this);
    else if (!wasReady) this.fail("CONNECT_FAILED", errorDetail(error) || "closed while connecting");
    else if (this.reader.state === BODY) this.lostMidBody(error);
    else if (this.reader.sawByte) this.fail("BAD_RESPONSE", "closed mid-head");
    else if (this.fromPool && ex.mayRetry()) {
      // A pooled socket the backend closed while idle: the request never got
      // an answer, so one transparent retry on a fresh connection is safe.
      this.ex = null;
      this.owner.retry(ex);
    } else {
      this.fail("RESET_BEFORE_RESPONSE", errorDetail(error));
    }
  }

  private lostMidBody(error: Error | undefined): void {
    // Read-until-close bodies end with a clean close (RFC 9112 6.3 item 8).
    if (error !== undefined || !this.reader.closedCleanly(this))
      this.fail("BAD_RESPONSE", `closed mid-body ${errorDetail(error)}`);
  }

  timedOut(code: ProxyErrorCode): void {
    this.timer = null;
    this.fail(code);
  }

  // --- teardown ------------------------------------------------------------

  /** Fails the current exchange (if any) and tears the socket down. */
  private fail(code: ProxyErrorCode, detail?: string): void {
    const ex = this.ex;
    this.destroy();
    ex?.fail(new ProxyError(code, detail));
  }

  /** Abrupt close (RST): errors, aborts, cancelled bodies, misbehaving backends. */
  destroy(): void {
    this.ex = null;
    this.body = null;
    this.reader.reset();
    if (this.state === CLOSED) return;
    this.state = CLOSED;
    this.clearTimer();
    this.outbox.length = 0;
    this.wake();
    this.socket?.terminate();
  }

  /** Graceful close (FIN) of a connection that is merely not reused. */
  close(): void {
    if (this.state === CLOSED) return;
    this.state = CLOSED;
    this.clearTimer();
    this.outbox.length = 0;
    this.wake(); // a request body still being pumped stops
    this.socket?.end();
  }

  private clearTimer(): void {
    this.responseDue = 0;
    if (this.state === CLOSED && this.responseTimer !== null) {
      clearTimeout(this.responseTimer);
      this.responseTimer = null;
    }
    if (this.timer === null) return;
    clearTimeout(this.timer);
    this.timer = null;
  }
}

function toResponse(head: ResponseHead, body: UpstreamResponse["body"]): UpstreamResponse {
  return {
    status: head.status,
    statusText: head.statusText,
    headers: head.headers,
    body,
    contentLength: head.contentLength,
  };
}

function connectTimedOut(conn: Conn): void {
  conn.timedOut("CONNECT_TIMEOUT");
}

function responseTimerFired(conn: Conn): void {
  conn.responseTimerFired();
}
