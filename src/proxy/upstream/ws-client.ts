/**
 * The WebSocket client toward a backend, on a Bun.connect socket of its
 * own: the opening handshake over HTTP/1.1 (ws-handshake.ts, with the
 * response parsed by parser.ts), then frames (ws-frames.ts). A backend that
 * answers the upgrade with anything but 101 gives its whole response back,
 * so the proxy can relay a 401, 403 or 404 as it is instead of a 502.
 */
import type { Socket } from "bun";
import { ProxyError, type ProxyErrorCode } from "../errors.ts";
import {
  bodyFraming,
  ChunkedDecoder,
  type Framing,
  findHeadEnd,
  HttpParseError,
  parseResponseHead,
  type ResponseHead,
} from "./parser.ts";
import { serializeRequestHead } from "./serialize.ts";
import { connectSocket, errorDetail } from "./socket.ts";
import type { AbortLike, UpstreamResponse, UpstreamTarget } from "./types.ts";
import {
  CLOSE_ABNORMAL,
  CLOSE_NO_STATUS,
  closePayload,
  encodeFrame,
  FrameDecoder,
  FrameError,
  type FrameHandler,
  isValidCloseCode,
  MAX_CONTROL_PAYLOAD,
  OP_BINARY,
  OP_CLOSE,
  OP_PING,
  OP_PONG,
  OP_TEXT,
  type SendOpcode,
} from "./ws-frames.ts";
import { checkSwitch, handshakeHeaders, newKey, offeredProtocols } from "./ws-handshake.ts";

export interface WebSocketRequest {
  /** Origin-form request target, exactly as the client sent it: "/chat?room=1". */
  target: string;
  /**
   * Fields for the backend, in order, hop-by-hop already removed. A Host is
   * kept (else one is made from the target); Sec-WebSocket-Protocol is
   * passed on as the offer. The handshake's own fields (Upgrade,
   * Connection, Sec-WebSocket-Key/-Version/-Extensions) are set here and
   * any copies in this list are dropped: no extension is ever offered.
   */
  headers: [string, string][];
}

export interface WebSocketOptions {
  /** DNS, TCP and the TLS handshake; 0 = no limit. */
  connectTimeoutMs: number;
  /** From the request written to the 101 head, or to the end of a refusal's body; 0 = no limit. */
  responseTimeoutMs: number;
  /** Aborts the handshake (the client went away); the promise rejects with signal.reason. */
  signal?: AbortLike;
  /** A larger response head is a BAD_RESPONSE (default 64 KiB). */
  maxHeaderBytes?: number;
  /** A refusal's body larger than this is a BAD_RESPONSE (default 1 MiB). */
  maxRefusalBytes?: number;
  /** A message from the backend larger than this closes the connection with 1009 (default 16 MiB). */
  maxMessageBytes?: number;
  /** After tether's Close frame, how long the backend has to answer and close the socket (default 5000 ms). */
  closeTimeoutMs?: number;
  /** Answer the backend's pings with a pong (default true). */
  autoPong?: boolean;
}

export type WebSocketUpgrade =
  | {
      kind: "refused";
      /** The backend's answer to the upgrade, body read whole (null when it had none). */
      response: UpstreamResponse;
    }
  | {
      kind: "open";
      /** The subprotocol the backend chose from the offer, or null. */
      protocol: string | null;
      /** The 101's fields as received (the proxy picks what to pass on). */
      headers: [string, string][];
      connection: UpstreamWebSocket;
    };

/** What an open connection reports; set with UpstreamWebSocket.start(). */
export interface UpstreamWebSocketHandler {
  text(data: string): void;
  binary(data: Uint8Array): void;
  /** A ping from the backend (already answered when autoPong is on). */
  ping?(payload: Uint8Array): void;
  pong?(payload: Uint8Array): void;
  /**
   * Called once, when the connection is over for the caller: the backend's
   * Close frame arrived (code 1005 if it carried none), or the connection
   * failed. On failure `error` says why (a reset, a frame the backend must
   * not send, the close timeout) and code is 1006. Not called after abort().
   */
  close(code: number, reason: string, error: string | null): void;
  /** The queued bytes went out: bufferedAmount is 0 again. */
  drain?(): void;
}

/**
 * Opens a WebSocket to target: connects, sends the upgrade, and resolves
 * with the backend's refusal (any non-101 answer) or with an open
 * connection. Rejects with ProxyError: CONNECT_FAILED, CONNECT_TIMEOUT,
 * RESET_BEFORE_RESPONSE, RESPONSE_TIMEOUT, BAD_RESPONSE (a malformed answer,
 * or a 101 that fails RFC 6455 4.1's checks), BAD_REQUEST (CR or LF in the
 * request); or with signal.reason on abort.
 */
export function openUpstreamWebSocket(
  target: UpstreamTarget,
  req: WebSocketRequest,
  opts: WebSocketOptions,
): Promise<WebSocketUpgrade> {
  const signal = opts.signal;
  if (signal?.aborted) return Promise.reject(signal.reason);
  const key = newKey();
  let head: string;
  try {
    head = serializeRequestHead({
      method: "GET",
      target: req.target,
      fields: handshakeHeaders(target, req.headers, key).flat(),
      body: null,
      bodyLength: null,
    });
  } catch (err) {
    return Promise.reject(err);
  }
  const { promise, resolve, reject } = Promise.withResolvers<WebSocketUpgrade>();
  const ws = new UpstreamWebSocket(opts, key, offeredProtocols(req.headers), resolve, reject);
  ws.connect(target, Buffer.from(head, "latin1"));
  return promise;
}

// Phases of a connection.
const CONNECTING = 0;
const HEAD = 1; // request sent, waiting for the response head
const REFUSAL = 2; // reading the body of a non-101 answer
const OPEN = 3; // frames
const DONE = 4; // socket closed or closing for good

type Timer = ReturnType<typeof setTimeout>;

/**
 * One WebSocket connection to a backend. Until start() it reads nothing:
 * frames that came with the 101 wait, and TCP holds back the rest.
 */
export class UpstreamWebSocket {
  private socket: Socket<UpstreamWebSocket> | null = null;
  private phase = CONNECTING;
  private timer: Timer | null = null;
  private readonly outbox: Uint8Array[] = [];
  private queued = 0;
  /** End the socket once the outbox is empty (after a Close sent on a protocol error). */
  private endWhenFlushed = false;
  // Handshake.
  private settle: { resolve(u: WebSocketUpgrade): void; reject(e: unknown): void } | null;
  private partialHead: Uint8Array | null = null;
  private sawResponseByte = false;
  private refusalHead: ResponseHead | null = null;
  private framing: Framing = "none";
  private remaining = 0;
  private readonly refusal: Uint8Array[] = [];
  private refusalBytes = 0;
  private chunked: ChunkedDecoder | null = null;
  // Frames.
  private readonly decoder: FrameDecoder;
  /** Where the decoder reports; the public ping/pong/close names send rather than receive. */
  private readonly frames: FrameHandler;
  private handler: UpstreamWebSocketHandler | null = null;
  private early: Uint8Array | null = null;
  private userPaused = false;
  private socketPaused = false;
  private closeSent = false;
  private reported = false;

  constructor(
    private readonly opts: WebSocketOptions,
    private readonly key: string,
    private readonly offered: string[],
    resolve: (u: WebSocketUpgrade) => void,
    reject: (e: unknown) => void,
  ) {
    this.settle = { resolve, reject };
    this.decoder = new FrameDecoder({ maxMessageBytes: opts.maxMessageBytes ?? 16 * 1024 * 1024 });
    this.frames = {
      text: (data) => this.handler?.text(data),
      binary: (data) => this.handler?.binary(data),
      ping: (payload) => this.pingReceived(payload),
      pong: (payload) => this.handler?.pong?.(payload),
      close: (code, reason) => this.closeReceived(code, reason),
    };
    opts.signal?.addEventListener("abort", this);
  }

  /** Bytes accepted by send calls that the socket has not taken yet. */
  get bufferedAmount(): number {
    return this.queued;
  }

  /** True while messages can be sent: open, and no Close sent yet. */
  get writable(): boolean {
    return this.phase === OPEN && !this.closeSent;
  }

  /** Starts reading frames, delivering to handler; frames that came with the 101 first. */
  start(handler: UpstreamWebSocketHandler): void {
    if (this.handler !== null) throw new Error("start() was already called");
    this.handler = handler;
    const early = this.early;
    this.early = null;
    if (early !== null) this.readFrames(early);
    if (this.phase === DONE && !this.reported) this.report(CLOSE_ABNORMAL, "", "closed before start()");
    this.syncPause();
  }

  /** Sends a text message; false when it was queued (wait for drain) or could not be sent. */
  sendText(data: string): boolean {
    return this.sendFrame(OP_TEXT, data);
  }

  sendBinary(data: Uint8Array): boolean {
    return this.sendFrame(OP_BINARY, data);
  }

  /** Payloads over 125 bytes are cut to 125 (RFC 6455 5.5). */
  ping(payload: Uint8Array = new Uint8Array(0)): boolean {
    return this.sendFrame(OP_PING, payload.subarray(0, MAX_CONTROL_PAYLOAD));
  }

  pong(payload: Uint8Array = new Uint8Array(0)): boolean {
    return this.sendFrame(OP_PONG, payload.subarray(0, MAX_CONTROL_PAYLOAD));
  }

  /**
   * Starts the closing handshake (RFC 6455 7.1.2): sends a Close and waits,
   * up to closeTimeoutMs, for the backend's Close and its closing the
   * socket. A code that may not be sent (1005, 1006, 1015, out of range)
   * sends a Close without one; a reason that does not fit is left out.
   */
  close(code?: number, reason = ""): void {
    if (this.phase !== OPEN || this.closeSent) return;
    this.sendClose(code, reason);
    this.armCloseTimer();
  }

  /** Drops the connection at once (RST), with no closing handshake and no close callback. */
  abort(): void {
    this.reported = true;
    this.destroy();
  }

  /** Stops reading from the backend (the client is slow); TCP pushes back. */
  pause(): void {
    this.userPaused = true;
    this.syncPause();
  }

  resume(): void {
    this.userPaused = false;
    this.syncPause();
  }

  // --- connecting and the handshake -----------------------------------------

  connect(target: UpstreamTarget, head: Uint8Array): void {
    this.outbox.push(head);
    this.queued = head.byteLength;
    const ms = this.opts.connectTimeoutMs;
    if (ms > 0) this.timer = setTimeout(timedOut, ms, this, "CONNECT_TIMEOUT");
    connectSocket(target, this);
  }

  /** AbortSignal listener. */
  handleEvent(): void {
    const settle = this.settle;
    if (settle === null) return;
    this.settle = null;
    this.destroy();
    settle.reject(this.opts.signal?.reason);
  }

  onOpen(socket: Socket<UpstreamWebSocket>, ready: boolean): void {
    if (this.phase === DONE) {
      socket.terminate(); // timed out or aborted while connecting
      return;
    }
    this.socket = socket;
    if (ready) this.onReady();
  }

  onHandshake(socket: Socket<UpstreamWebSocket>, success: boolean, authError: Error | null): void {
    if (this.phase === DONE) socket.terminate();
    else if (success) this.onReady();
    else this.fail("CONNECT_FAILED", `TLS: ${errorDetail(authError)}`);
  }

  private onReady(): void {
    this.clearTimer();
    this.phase = HEAD;
    (this.socket as Socket<UpstreamWebSocket>).setNoDelay(true);
    const ms = this.opts.responseTimeoutMs;
    if (ms > 0) this.timer = setTimeout(timedOut, ms, this, "RESPONSE_TIMEOUT");
    this.flush();
  }

  onConnectError(error: Error): void {
    if (this.phase === DONE) return;
    const code = (error as { code?: string }).code;
    this.fail(code === "ETIMEDOUT" ? "CONNECT_TIMEOUT" : "CONNECT_FAILED", errorDetail(error));
  }

  onData(buf: Uint8Array): void {
    try {
      if (this.phase === OPEN) {
        if (this.handler === null) this.early = this.early === null ? buf : Buffer.concat([this.early, buf]);
        else this.readFrames(buf);
      } else if (this.phase === HEAD) {
        this.readHead(buf);
      } else if (this.phase === REFUSAL) {
        this.readRefusal(buf, 0);
      }
    } catch (err) {
      if (!(err instanceof HttpParseError)) throw err;
      this.fail("BAD_RESPONSE", err.message);
    }
  }

  private readHead(buf: Uint8Array): void {
    this.sawResponseByte = true;
    const max = this.opts.maxHeaderBytes ?? 64 * 1024;
    let data = this.partialHead === null ? buf : Buffer.concat([this.partialHead, buf]);
    let from = this.partialHead === null ? 0 : Math.max(0, this.partialHead.length - 3);
    for (;;) {
      const end = findHeadEnd(data, from);
      if ((end < 0 ? data.length : end) > max) throw new HttpParseError("response head too large");
      if (end < 0) {
        this.partialHead = data;
        return;
      }
      this.partialHead = null;
      const head = parseResponseHead(data, 0, end);
      const rest = data.subarray(end);
      if (head.status === 101) {
        this.switched(head, rest);
        return;
      }
      if (head.status >= 200) {
        this.refused(head, rest);
        return;
      }
      // Other 1xx answers are interim (RFC 9110 15.2); the real one follows.
      if (rest.length === 0) return;
      data = rest;
      from = 0;
    }
  }

  private switched(head: ResponseHead, rest: Uint8Array): void {
    let protocol: string | null;
    try {
      protocol = checkSwitch(head, this.key, this.offered);
    } catch (err) {
      if (!(err instanceof ProxyError)) throw err;
      this.fail(err.code, err.detail);
      return;
    }
    this.clearTimer();
    this.phase = OPEN;
    if (rest.length > 0) this.early = rest;
    this.syncPause();
    this.resolve({ kind: "open", protocol, headers: head.headers, connection: this });
  }

  private refused(head: ResponseHead, rest: Uint8Array): void {
    this.refusalHead = head;
    this.framing = bodyFraming(head, false);
    if (this.framing === "none") {
      this.endRefusal(rest.length === 0);
      return;
    }
    this.phase = REFUSAL;
    if (this.framing === "length") this.remaining = head.contentLength as number;
    if (this.framing === "chunked") this.chunked = new ChunkedDecoder(this.opts.maxHeaderBytes ?? 64 * 1024);
    if (rest.length > 0) this.readRefusal(rest, 0);
  }

  private readRefusal(buf: Uint8Array, start: number): void {
    if (this.framing === "chunked") {
      const pieces: Uint8Array[] = [];
      const end = (this.chunked as ChunkedDecoder).decode(buf, start, pieces);
      for (const piece of pieces) this.keepRefusal(piece);
      if (end >= 0) this.endRefusal(end === buf.length);
    } else if (this.framing === "length") {
      const n = Math.min(this.remaining, buf.length - start);
      this.remaining -= n;
      this.keepRefusal(buf.subarray(start, start + n));
      if (this.remaining === 0) this.endRefusal(start + n === buf.length);
    } else {
      this.keepRefusal(buf.subarray(start));
    }
  }

  private keepRefusal(piece: Uint8Array): void {
    this.refusalBytes += piece.byteLength;
    if (this.refusalBytes > (this.opts.maxRefusalBytes ?? 1024 * 1024)) {
      throw new HttpParseError("refusal body too large");
    }
    if (piece.byteLength > 0) this.refusal.push(piece);
  }

  /** The refusal is complete: hand it over and close the socket (FIN if in step, else RST). */
  private endRefusal(clean: boolean): void {
    const head = this.refusalHead as ResponseHead;
    const pieces = this.refusal;
    const body =
      pieces.length === 0 ? null : pieces.length === 1 ? (pieces[0] as Uint8Array) : Buffer.concat(pieces);
    if (clean) this.end();
    else this.destroy();
    this.resolve({
      kind: "refused",
      response: {
        status: head.status,
        statusText: head.statusText,
        headers: head.headers,
        body,
        contentLength: head.contentLength,
      },
    });
  }

  private resolve(upgrade: WebSocketUpgrade): void {
    const settle = this.settle;
    this.settle = null;
    this.opts.signal?.removeEventListener("abort", this);
    settle?.resolve(upgrade);
  }

  // --- frames ------------------------------------------------------------------

  private readFrames(buf: Uint8Array): void {
    if (this.decoder.closed || this.endWhenFlushed) return;
    try {
      this.decoder.push(buf, this.frames);
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      // Fail the WebSocket connection (RFC 6455 7.1.7): Close with the code, then FIN.
      if (!this.closeSent) this.sendClose(err.closeCode, "");
      this.endWhenFlushed = true;
      if (this.outbox.length === 0) this.end();
      this.report(CLOSE_ABNORMAL, "", err.message);
    }
  }

  /** RFC 6455 5.5.2: a ping is answered with a pong carrying the same payload. */
  private pingReceived(payload: Uint8Array): void {
    if (this.opts.autoPong !== false && !this.closeSent) this.sendFrame(OP_PONG, payload);
    this.handler?.ping?.(payload);
  }

  /**
   * The backend's Close. It is echoed (RFC 6455 5.5.1) unless
   * ours went first; the backend then closes the socket (7.1.1), within
   * closeTimeoutMs or it is reset.
   */
  private closeReceived(code: number | null, reason: string): void {
    if (!this.closeSent) this.sendFrame(OP_CLOSE, code === null ? closePayload() : closePayload(code));
    this.closeSent = true;
    this.armCloseTimer();
    this.report(code ?? CLOSE_NO_STATUS, reason, null);
  }

  private report(code: number, reason: string, error: string | null): void {
    if (this.reported) return;
    this.reported = true;
    this.handler?.close(code, reason, error);
  }

  // --- writing -------------------------------------------------------------------

  private sendFrame(opcode: SendOpcode, payload: Uint8Array | string): boolean {
    if (this.phase !== OPEN || this.closeSent) return false;
    return this.write(encodeFrame(opcode, payload));
  }

  private sendClose(code: number | undefined, reason: string): void {
    let payload: Uint8Array;
    if (code === undefined || !isValidCloseCode(code)) payload = closePayload();
    else if (Buffer.byteLength(reason) > MAX_CONTROL_PAYLOAD - 2) payload = closePayload(code);
    else payload = closePayload(code, reason);
    this.write(encodeFrame(OP_CLOSE, payload));
    this.closeSent = true;
  }

  /** Writes what the socket takes now and queues the rest for drain; true when all went out. */
  private write(bytes: Uint8Array): boolean {
    if (this.phase !== DONE && this.outbox.length === 0 && this.socket !== null) {
      const written = Math.max(0, this.socket.write(bytes));
      if (written === bytes.byteLength) return true;
      bytes = bytes.subarray(written);
    }
    this.outbox.push(bytes);
    this.queued += bytes.byteLength;
    return false;
  }

  private flush(): void {
    const socket = this.socket as Socket<UpstreamWebSocket>;
    const outbox = this.outbox;
    while (outbox.length > 0) {
      const chunk = outbox[0] as Uint8Array;
      const n = Math.max(0, socket.write(chunk));
      this.queued -= n;
      if (n < chunk.byteLength) {
        outbox[0] = chunk.subarray(n);
        return;
      }
      outbox.shift();
    }
    this.queued = 0;
    if (this.endWhenFlushed) this.end();
    else if (this.phase === OPEN) this.handler?.drain?.();
  }

  onDrain(): void {
    if (this.phase !== DONE && this.phase !== CONNECTING) this.flush();
  }

  // --- closing -------------------------------------------------------------------

  private armCloseTimer(): void {
    if (this.timer !== null || this.phase === DONE) return;
    this.timer = setTimeout(closeTimedOut, this.opts.closeTimeoutMs ?? 5000, this);
  }

  closeTimedOut(): void {
    this.timer = null;
    this.destroy();
    this.report(CLOSE_ABNORMAL, "", "the backend did not finish the closing handshake in time");
  }

  /** Bun reports a handler that threw, or a failed TLS session; either way the socket is done. */
  onError(error: Error): void {
    const socket = this.socket;
    this.onClose(error);
    socket?.terminate();
  }

  /** Closed by the peer: FIN (no error) or reset (error). */
  onClose(error?: Error): void {
    const phase = this.phase;
    if (phase === DONE) return;
    if (phase === CONNECTING) this.fail("CONNECT_FAILED", errorDetail(error) || "closed while connecting");
    else if (phase === REFUSAL) {
      // A read-until-close body ends with a clean close (RFC 9112 6.3 item 8).
      if (this.framing === "close" && error === undefined) this.endRefusal(false);
      else this.fail("BAD_RESPONSE", `closed mid-body ${errorDetail(error)}`);
    } else if (phase === HEAD) {
      if (this.sawResponseByte) this.fail("BAD_RESPONSE", "closed mid-head");
      else this.fail("RESET_BEFORE_RESPONSE", errorDetail(error));
    } else {
      this.teardown();
      // Before start() the early bytes may still hold the backend's Close; start() reports.
      if (this.handler !== null) {
        const detail = errorDetail(error) || "closed without a close frame";
        this.report(CLOSE_ABNORMAL, "", this.decoder.closed ? null : detail);
      }
    }
  }

  timedOut(code: ProxyErrorCode): void {
    this.timer = null;
    this.fail(code);
  }

  /** Fails the handshake and resets the socket. */
  private fail(code: ProxyErrorCode, detail?: string): void {
    this.destroy();
    const settle = this.settle;
    this.settle = null;
    this.opts.signal?.removeEventListener("abort", this);
    settle?.reject(new ProxyError(code, detail));
  }

  /** Graceful close (FIN). */
  private end(): void {
    const socket = this.socket;
    this.teardown();
    socket?.end();
  }

  /** Abrupt close (RST). */
  private destroy(): void {
    const socket = this.socket;
    this.teardown();
    socket?.terminate();
  }

  private teardown(): void {
    this.phase = DONE;
    this.outbox.length = 0;
    this.queued = 0;
    this.clearTimer();
  }

  private clearTimer(): void {
    if (this.timer === null) return;
    clearTimeout(this.timer);
    this.timer = null;
  }

  /** The socket reads while started and not paused by the caller. */
  private syncPause(): void {
    const socket = this.socket;
    if (socket === null || this.phase !== OPEN) return;
    const pause = this.handler === null || this.userPaused;
    if (pause === this.socketPaused) return;
    this.socketPaused = pause;
    if (pause) socket.pause();
    else socket.resume();
  }
}

function timedOut(ws: UpstreamWebSocket, code: ProxyErrorCode): void {
  ws.timedOut(code);
}

function closeTimedOut(ws: UpstreamWebSocket): void {
  ws.closeTimedOut();
}
