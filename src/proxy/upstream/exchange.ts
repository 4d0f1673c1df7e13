/**
 * One request/response exchange: the request side (head, body, replay after
 * a stale pooled socket) and the outcome (the promise, the body stream, the
 * abort signal). The socket side lives in connection.ts; an exchange moves
 * to a second connection at most once (the stale-socket retry).
 */
import { ProxyError } from "../errors.ts";
import { IDEMPOTENT } from "../methods.ts";
import { frameChunk, LAST_CHUNK, requestAllowsReuse } from "./serialize.ts";
import type { RequestOptions, UpstreamRequest, UpstreamResponse, UpstreamTarget } from "./types.ts";

const PENDING = 0; // waiting for the response head
const STREAMING = 1; // promise resolved, body still arriving
const DONE = 2;

/**
 * Stream-body bytes kept so a request can be replayed after a stale pooled
 * socket fails. Past this the request is no longer retried (HAProxy's L7
 * retries likewise need the request to fit one buffer).
 */
const REPLAY_LIMIT = 64 * 1024;

type Timer = ReturnType<typeof setTimeout>;

/** What a response body stream exposes to the exchange. */
export interface BodyErrorSink {
  error(reason: unknown): void;
}

/**
 * Where an exchange's outcome goes: the response head once it arrived, or the
 * failure. A promise's resolvers are one; the proxy's per-request object is
 * another, so the request path needs no promise of its own for this step.
 */
export interface ExchangeSink {
  resolve(res: UpstreamResponse): void;
  reject(reason: unknown): void;
}

/**
 * What an exchange needs of the connection it runs on (connection.ts): a
 * narrow view, so the two modules do not import each other.
 */
export interface RequestChannel {
  /** The connection came from the keep-alive pool (a stale one may fail the request). */
  readonly fromPool: boolean;
  /** Writes the request's head (headLength bytes: requestHeadLength), with a small body in the same write. */
  writeHead(req: UpstreamRequest, headLength: number, body: Uint8Array | null): void;
  /** Writes what the socket takes now and queues the rest; true when everything went out. */
  write(bytes: Uint8Array): boolean;
  /** The whole request is queued. */
  endRequest(): void;
  /** Resolves when the queued bytes went out, or the connection closed. */
  drained(): Promise<void>;
  destroy(): void;
}

export class Exchange {
  conn: RequestChannel | null = null;
  /** Already moved to a fresh connection once. */
  retried = false;
  readonly isHead: boolean;
  /** The request lets the connection be reused (no Connection: close). */
  readonly reuse: boolean;
  private phase = PENDING;
  private sink: BodyErrorSink | null = null;
  /** Framed body bytes sent on a pooled connection, while a retry may still need them. */
  private replay: Uint8Array[] | null = null;
  private replayBytes = 0;
  private reader: { cancel(reason?: unknown): Promise<void> } | null = null;
  private pumping = false;
  private bodySent = false;
  private sentBytes = 0;
  /** Bounds a stalled upload (opts.bodyIdleMs); one per exchange, re-armed only when it fires. */
  private bodyTimer: Timer | null = null;
  /** When the pump began waiting for the client's next chunk; -1 while it waits on the backend. */
  private awaitingClientSince = -1;

  constructor(
    readonly target: UpstreamTarget,
    readonly req: UpstreamRequest,
    readonly opts: RequestOptions,
    /** The head's length in bytes, its pieces checked (requestHeadLength). */
    private readonly headLength: number,
    private readonly outcome: ExchangeSink,
  ) {
    this.isHead = req.method === "HEAD";
    this.reuse = requestAllowsReuse(req);
  }

  /** Queues the whole request (or as much of a stream body as is known) on conn. */
  writeRequest(conn: RequestChannel): void {
    const body = this.req.body;
    if (body === null || body instanceof Uint8Array) {
      conn.writeHead(this.req, this.headLength, body);
      conn.endRequest();
      return;
    }
    conn.writeHead(this.req, this.headLength, null);
    if (this.replay !== null) for (const bytes of this.replay) conn.write(bytes);
    // Only a request on a pooled socket can be retried, and only once.
    this.replay = conn.fromPool && !this.retried ? [] : null;
    this.replayBytes = 0;
    if (this.bodySent) conn.endRequest();
    else if (!this.pumping) this.pump(body);
  }

  /**
   * A retry is safe only if nothing of the request is lost (stream bodies
   * need their replay) and the method is idempotent: the backend may have
   * acted on the request before closing, and a proxy must not repeat a
   * non-idempotent one on its own (RFC 9110 §9.2.2).
   */
  mayRetry(): boolean {
    return (
      !this.retried &&
      IDEMPOTENT.has(this.req.method) &&
      this.phase === PENDING &&
      (!(this.req.body instanceof ReadableStream) || this.replay !== null)
    );
  }

  respond(res: UpstreamResponse, sink: BodyErrorSink | null): void {
    if (this.phase !== PENDING) return;
    this.sink = sink;
    if (sink === null) this.finish();
    else this.phase = STREAMING;
    this.outcome.resolve(res);
  }

  /** The response body was fully received. */
  complete(): void {
    this.finish();
  }

  /** Rejects the promise, or errors the body stream once the head was delivered. */
  fail(reason: unknown): void {
    // A stream body already (partly) read cannot be sent again: the caller must not retry it elsewhere.
    if (reason instanceof ProxyError && reason.safeToRetry && this.reader !== null)
      reason = new ProxyError(reason.code, reason.detail, false);
    if (this.phase === PENDING) this.outcome.reject(reason);
    else if (this.phase === STREAMING) this.sink?.error(reason);
    else return;
    this.finish(reason);
  }

  /** The consumer cancelled the body stream (its client went away). */
  cancelled(reason: unknown): void {
    if (this.phase === DONE) return;
    const conn = this.conn;
    this.finish(reason);
    conn?.destroy();
  }

  /** AbortSignal listener (an object listener: no closure per request). */
  handleEvent(): void {
    if (this.phase === DONE) return;
    this.conn?.destroy();
    this.fail(this.opts.signal?.reason);
  }

  /**
   * The body timer fired. Only time spent waiting on the client counts: a
   * backend that is slow to take the upload is not the client's fault.
   */
  checkBodyIdle(): void {
    this.bodyTimer = null;
    if (this.phase === DONE || this.bodySent) return;
    const idleMs = this.opts.bodyIdleMs as number;
    const since = this.awaitingClientSince;
    const left = since < 0 ? idleMs : since + idleMs - performance.now();
    if (left > 0) {
      this.bodyTimer = setTimeout(bodyIdle, left, this);
      return;
    }
    // Part of the body is on the wire: the connection cannot carry anything else.
    this.conn?.destroy();
    this.fail(new ProxyError("CLIENT_TIMEOUT", `no request body byte for ${idleMs} ms`));
  }

  private stopBodyTimer(): void {
    if (this.bodyTimer === null) return;
    clearTimeout(this.bodyTimer);
    this.bodyTimer = null;
  }

  private finish(reason?: unknown): void {
    this.phase = DONE;
    this.conn = null;
    this.stopBodyTimer();
    this.opts.signal?.removeEventListener("abort", this);
    if (this.reader !== null && !this.bodySent) this.reader.cancel(reason).catch(ignore);
  }

  /**
   * Streams the request body with backpressure: the next chunk is read only
   * once the socket took the previous one, so a large upload never sits in
   * memory. Chunked framing when the length is unknown (RFC 9112 7.1).
   */
  private async pump(body: ReadableStream<Uint8Array>): Promise<void> {
    const expected = this.req.bodyLength;
    this.pumping = true;
    try {
      // The body is read only once the connection is open: a failed connect leaves the stream
      // untouched, so the caller can still send the request to another backend.
      await this.conn?.drained();
      if (this.phase === DONE) return;
      const reader = body.getReader();
      this.reader = reader;
      const idleMs = this.opts.bodyIdleMs ?? 0;
      // Progress is a timestamp per chunk; the timer checks it when it fires, so chunks cost no timer calls.
      if (idleMs > 0) this.bodyTimer = setTimeout(bodyIdle, idleMs, this);
      for (;;) {
        this.awaitingClientSince = performance.now();
        const { done, value } = await reader.read();
        this.awaitingClientSince = -1;
        if (this.phase === DONE) return;
        if (done) break;
        if (value.byteLength === 0) continue;
        this.sentBytes += value.byteLength;
        if (expected !== null && this.sentBytes > expected)
          throw new Error("body longer than its Content-Length");
        if (!(await this.send(expected === null ? frameChunk(value) : value))) return;
      }
      if (expected !== null && this.sentBytes !== expected)
        throw new Error("body shorter than its Content-Length");
      if (expected === null && !(await this.send(LAST_CHUNK))) return;
      this.bodySent = true;
      this.stopBodyTimer();
      this.conn?.endRequest();
    } catch (err) {
      if (this.phase === DONE) return;
      this.conn?.destroy();
      this.fail(
        new ProxyError("BAD_REQUEST", `request body: ${err instanceof Error ? err.message : String(err)}`),
      );
    }
  }

  /** Writes on the current connection and waits until the socket took the bytes; false once the exchange ended. */
  private async send(bytes: Uint8Array): Promise<boolean> {
    this.remember(bytes);
    const conn = this.conn;
    if (conn !== null && !conn.write(bytes)) await conn.drained();
    return this.phase !== DONE;
  }

  private remember(bytes: Uint8Array): void {
    if (this.replay === null) return;
    this.replayBytes += bytes.byteLength;
    if (this.replayBytes > REPLAY_LIMIT) this.replay = null;
    else this.replay.push(bytes);
  }
}

function bodyIdle(ex: Exchange): void {
  ex.checkBodyIdle();
}

function ignore(): void {}
