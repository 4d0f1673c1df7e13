/**
 * The client's side of a WebSocket on tether's HTTP/1.1 front end, what
 * Bun.serve's ServerWebSocket is on the other: the 101 answer to the
 * client's handshake (RFC 6455 4.2.2), then the client's frames (masked)
 * decoded into messages for the relay (proxy/websocket.ts) and the relay's
 * messages written back as frames. Pings are answered; a Close is echoed;
 * a frame the client must not send closes with the code the decoder names.
 */
import { createHash } from "node:crypto";
import {
  CLOSE_PROTOCOL_ERROR,
  closePayload,
  encodeFrame,
  FrameDecoder,
  FrameError,
  type FrameHandler,
  isValidCloseCode,
  OP_BINARY,
  OP_CLOSE,
  OP_PING,
  OP_PONG,
  OP_TEXT,
} from "../../proxy/upstream/ws-frames.ts";
import { type ClientSocket, relay, type WsData } from "../../proxy/websocket.ts";
import { httpDate } from "./response-head.ts";

/** A message larger than this closes the socket with 1009 (Bun.serve's default limit). */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
const ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** 16 random bytes in base64 (RFC 6455 4.1). */
const NONCE = /^[A-Za-z0-9+/]{22}==$/;

/** What the socket needs of its connection. */
export interface FrameConnection {
  write(bytes: Uint8Array): void;
  /** Bytes written but not yet taken by the socket. */
  readonly buffered: number;
  readonly closed: boolean;
  pauseReading(): void;
  resumeReading(): void;
  /** Ends the connection once what was written has gone out. */
  closeWhenFlushed(): void;
}

/**
 * The client's Sec-WebSocket-Key when its handshake is one a server may
 * accept (version 13, a 16-byte nonce), else null.
 */
export function handshakeKey(fields: { get(name: string): string | null }): string | null {
  if (fields.get("sec-websocket-version") !== "13") return null;
  const key = fields.get("sec-websocket-key")?.trim() ?? "";
  return NONCE.test(key) ? key : null;
}

/** The 101 answer's head for `key`, with the relay's own fields (subprotocol, Set-Cookie). */
export function switchingHead(key: string, headers: Headers): string {
  const accept = createHash("sha1")
    .update(key + ACCEPT_GUID)
    .digest("base64");
  let text = `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\ndate: ${httpDate()}\r\n`;
  for (const [name, value] of headers) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}

export class H1WebSocket implements ClientSocket {
  private readonly decoder = new FrameDecoder({ maxMessageBytes: MAX_MESSAGE_BYTES, expectMasked: true });
  private closeSent = false;
  private readonly frames: FrameHandler = {
    text: (text) => relay.message(this, text),
    binary: (bytes) => relay.message(this, bytes),
    ping: (payload) => {
      if (!this.closeSent) this.conn.write(encodeFrame(OP_PONG, payload, null));
    },
    pong: () => {},
    close: (code, reason) => {
      // The close handshake: the backend gets the client's code, the client its own echoed.
      relay.close(this, code ?? 1005, reason);
      this.close(code !== null && isValidCloseCode(code) ? code : undefined);
    },
  };

  constructor(
    readonly data: WsData,
    private readonly conn: FrameConnection,
  ) {}

  /** The 101 went out: the relay starts reading the backend. */
  opened(): void {
    relay.open(this);
  }

  sendText(text: string): number {
    return this.send(OP_TEXT, text);
  }

  sendBinary(bytes: Uint8Array): number {
    return this.send(OP_BINARY, bytes);
  }

  private send(opcode: typeof OP_TEXT | typeof OP_BINARY, payload: string | Uint8Array): number {
    if (this.closeSent || this.conn.closed) return 0;
    const frame = encodeFrame(opcode, payload, null);
    this.conn.write(frame);
    return this.conn.buffered > 0 ? -1 : frame.length;
  }

  /** Asks the client for a pong (an idle check). */
  ping(): void {
    if (!this.closeSent) this.conn.write(encodeFrame(OP_PING, new Uint8Array(0), null));
  }

  close(code?: number, reason = ""): void {
    if (this.closeSent) return;
    this.closeSent = true;
    if (!this.conn.closed) {
      this.conn.write(encodeFrame(OP_CLOSE, closePayload(code, code === undefined ? "" : reason), null));
      this.conn.closeWhenFlushed();
    }
  }

  pause(): void {
    this.conn.pauseReading();
  }

  resume(): void {
    this.conn.resumeReading();
  }

  getBufferedAmount(): number {
    return this.conn.buffered;
  }

  /** Bytes from the client. */
  received(bytes: Uint8Array): void {
    try {
      this.decoder.push(bytes, this.frames);
    } catch (e) {
      const code = e instanceof FrameError ? e.closeCode : CLOSE_PROTOCOL_ERROR;
      relay.close(this, code, "");
      this.close(code);
    }
  }

  /** The connection took what was buffered: the relay reads the backend again. */
  drained(): void {
    relay.drain(this);
  }

  /** The connection is gone: the backend side closes too. */
  gone(): void {
    this.closeSent = true;
    relay.close(this, 1006, "");
  }
}
