/**
 * WebSocket framing (RFC 6455 5) with no I/O: an encoder for the frames
 * tether sends to a backend, as a client (masked), and an incremental
 * decoder for the frames a backend sends back (unmasked). No extension is
 * ever negotiated, so the reserved bits must be zero and payloads are never
 * compressed.
 *
 * The decoder is strict in the way the HTTP parser is: anything the RFC says
 * must fail the connection (a masked server frame, an unknown opcode, a
 * fragmented or oversized control frame, a non-minimal length, a stray
 * continuation, invalid UTF-8 in text) throws FrameError with the close code
 * to send.
 */

export const OP_CONTINUATION = 0x0;
export const OP_TEXT = 0x1;
export const OP_BINARY = 0x2;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;
export const OP_PONG = 0xa;

/** The opcodes tether sends; continuation frames are never sent (no fragmentation). */
export type SendOpcode =
  | typeof OP_TEXT
  | typeof OP_BINARY
  | typeof OP_CLOSE
  | typeof OP_PING
  | typeof OP_PONG;

/** Close codes (RFC 6455 7.4.1). */
export const CLOSE_NORMAL = 1000;
export const CLOSE_PROTOCOL_ERROR = 1002;
/** Reserved: "no status code was present"; never sent in a frame. */
export const CLOSE_NO_STATUS = 1005;
/** Reserved: "closed without a Close frame"; never sent in a frame. */
export const CLOSE_ABNORMAL = 1006;
export const CLOSE_INVALID_PAYLOAD = 1007;
export const CLOSE_TOO_BIG = 1009;

/** Control frame payloads are at most 125 bytes (RFC 6455 5.5). */
export const MAX_CONTROL_PAYLOAD = 125;

/** A frame the peer must not have sent; closeCode is the code to close with. */
export class FrameError extends Error {
  override readonly name = "FrameError";
  constructor(
    readonly closeCode: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Whether a close code may appear in a Close frame (RFC 6455 7.4.1, 7.4.2;
 * 1012-1014 are registered in the IANA WebSocket Close Code registry).
 */
export function isValidCloseCode(code: number): boolean {
  if (code >= 3000 && code <= 4999) return Number.isInteger(code);
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014);
}

// --- encoding ----------------------------------------------------------------

/**
 * Masking keys come from a pool of random bytes refilled in bulk: one
 * getRandomValues call per 1024 frames instead of one per frame. RFC 6455
 * 10.3 asks for keys the application cannot predict; a CSPRNG does that.
 */
const maskPool = new Uint8Array(4096);
let maskOffset = maskPool.length;

function nextMask(out: Uint8Array, at: number): void {
  if (maskOffset === maskPool.length) {
    crypto.getRandomValues(maskPool);
    maskOffset = 0;
  }
  out[at] = maskPool[maskOffset] as number;
  out[at + 1] = maskPool[maskOffset + 1] as number;
  out[at + 2] = maskPool[maskOffset + 2] as number;
  out[at + 3] = maskPool[maskOffset + 3] as number;
  maskOffset += 4;
}

/**
 * One whole frame (FIN set) as one buffer, ready for one socket write.
 * `mask`: "random" for the frames a client sends (RFC 6455 5.3), a fixed
 * 4-byte key (tests), or null for an unmasked frame as a server sends it.
 * A string payload is written as UTF-8 straight into the frame.
 */
export function encodeFrame(
  opcode: SendOpcode,
  payload: Uint8Array | string,
  mask: "random" | Uint8Array | null = "random",
): Uint8Array {
  const length = typeof payload === "string" ? Buffer.byteLength(payload, "utf8") : payload.byteLength;
  if (opcode >= OP_CLOSE && length > MAX_CONTROL_PAYLOAD) {
    throw new RangeError(`control frame payload of ${length} bytes (at most ${MAX_CONTROL_PAYLOAD})`);
  }
  const lengthBytes = length < 126 ? 0 : length < 0x10000 ? 2 : 8;
  const maskBytes = mask === null ? 0 : 4;
  const start = 2 + lengthBytes + maskBytes;
  const out = Buffer.allocUnsafe(start + length);
  out[0] = 0x80 | opcode;
  const maskBit = mask === null ? 0 : 0x80;
  if (lengthBytes === 0) {
    out[1] = maskBit | length;
  } else if (lengthBytes === 2) {
    out[1] = maskBit | 126;
    out.writeUInt16BE(length, 2);
  } else {
    out[1] = maskBit | 127;
    out.writeUInt32BE(Math.floor(length / 0x100000000), 2);
    out.writeUInt32BE(length >>> 0, 6);
  }
  if (typeof payload === "string") out.write(payload, start, "utf8");
  else out.set(payload, start);
  if (mask !== null) {
    const at = start - 4;
    if (mask === "random") nextMask(out, at);
    else out.set(mask.subarray(0, 4), at);
    applyMask(out, start, out.length, out, at);
  }
  return out;
}

/** A Close frame's payload: the code (big-endian) then the reason in UTF-8; no code gives an empty payload. */
export function closePayload(code?: number, reason = ""): Uint8Array {
  if (code === undefined) {
    if (reason !== "") throw new RangeError("a close reason needs a close code");
    return new Uint8Array(0);
  }
  if (!isValidCloseCode(code)) throw new RangeError(`close code ${code} may not be sent`);
  const out = Buffer.allocUnsafe(2 + Buffer.byteLength(reason, "utf8"));
  if (out.length > MAX_CONTROL_PAYLOAD) throw new RangeError("close reason longer than 123 bytes");
  out.writeUInt16BE(code, 0);
  out.write(reason, 2, "utf8");
  return out;
}

/** XORs buf[from, to) with the 4-byte key at key[keyAt]; the key cycles from `from` (RFC 6455 5.3). */
function applyMask(buf: Uint8Array, from: number, to: number, key: Uint8Array, keyAt: number): void {
  const k0 = key[keyAt] as number;
  const k1 = key[keyAt + 1] as number;
  const k2 = key[keyAt + 2] as number;
  const k3 = key[keyAt + 3] as number;
  let i = from;
  for (; i + 3 < to; i += 4) {
    buf[i] = (buf[i] as number) ^ k0;
    buf[i + 1] = (buf[i + 1] as number) ^ k1;
    buf[i + 2] = (buf[i + 2] as number) ^ k2;
    buf[i + 3] = (buf[i + 3] as number) ^ k3;
  }
  // At most three bytes remain, and i - from is a multiple of 4 here.
  if (i < to) buf[i] = (buf[i] as number) ^ k0;
  if (i + 1 < to) buf[i + 1] = (buf[i + 1] as number) ^ k1;
  if (i + 2 < to) buf[i + 2] = (buf[i + 2] as number) ^ k2;
}

// --- decoding ----------------------------------------------------------------

/** What the decoder reports; each call is one whole message or control frame. */
export interface FrameHandler {
  text(data: string): void;
  binary(data: Uint8Array): void;
  ping(payload: Uint8Array): void;
  pong(payload: Uint8Array): void;
  /** A Close frame: code null when it carried none (reported to the application as 1005). */
  close(code: number | null, reason: string): void;
}

export interface FrameDecoderOptions {
  /** A data message (all its fragments together) larger than this fails with 1009. */
  maxMessageBytes: number;
  /**
   * Frames must be masked (decoding what a client sends) rather than
   * unmasked (what a server sends, the default). RFC 6455 5.1: either
   * side fails the connection on the wrong kind.
   */
  expectMasked?: boolean;
}

const fatalUtf8 = new TextDecoder("utf-8", { fatal: true });

// Decoder states.
const HEADER = 0; // waiting for a whole frame header
const PAYLOAD = 1; // reading the current frame's payload
const CLOSED = 2; // a Close frame arrived; nothing after it is read

/**
 * Incremental frame decoder: push() bytes as they arrive, in pieces of any
 * size; the handler is called once per complete message or control frame.
 * Continuation frames are joined into their message; control frames may
 * arrive between fragments (RFC 6455 5.4). Payloads handed to the handler
 * may be views into the pushed buffers, so those must not be reused.
 * After a Close frame the decoder ignores everything (RFC 6455 5.5.1).
 */
export class FrameDecoder {
  private readonly maxMessageBytes: number;
  private readonly expectMasked: boolean;
  private state = HEADER;
  /** Bytes of an incomplete frame header, kept across pushes (at most 14). */
  private readonly header = new Uint8Array(14);
  private headerBytes = 0;
  // The frame being read.
  private opcode = 0;
  private fin = false;
  private remaining = 0;
  private readonly maskKey = new Uint8Array(4);
  private masked = false;
  /** Payload bytes of the current frame already unmasked (the key's phase). */
  private maskPhase = 0;
  // The data message being assembled; messageOpcode 0 when none is open.
  private messageOpcode = 0;
  private messageBytes = 0;
  private readonly fragments: Uint8Array[] = [];
  // The control frame being assembled.
  private readonly control: Uint8Array[] = [];

  constructor(opts: FrameDecoderOptions) {
    if (!(opts.maxMessageBytes > 0)) throw new RangeError("maxMessageBytes must be > 0");
    this.maxMessageBytes = opts.maxMessageBytes;
    this.expectMasked = opts.expectMasked ?? false;
  }

  /** True once a Close frame was decoded. */
  get closed(): boolean {
    return this.state === CLOSED;
  }

  /** Decodes buf, calling handler for each complete message; throws FrameError. */
  push(buf: Uint8Array, handler: FrameHandler): void {
    let i = 0;
    const len = buf.length;
    while (i < len && this.state !== CLOSED) {
      if (this.state === HEADER) {
        i = this.readHeader(buf, i);
        if (this.state === HEADER) return; // need more bytes
        if (this.remaining === 0) this.endFrame(handler);
        continue;
      }
      const n = Math.min(this.remaining, len - i);
      let piece = buf.subarray(i, i + n);
      if (this.masked) {
        piece = new Uint8Array(piece); // unmask a copy: the caller's buffer stays as it was
        const phase = this.maskPhase;
        const key = this.maskKey;
        for (let j = 0; j < piece.length; j++) {
          piece[j] = (piece[j] as number) ^ (key[(phase + j) & 3] as number);
        }
        this.maskPhase = (phase + n) & 3;
      }
      (this.opcode >= OP_CLOSE ? this.control : this.fragments).push(piece);
      i += n;
      this.remaining -= n;
      if (this.remaining === 0) this.endFrame(handler);
    }
  }

  /**
   * Reads a frame header from buf[i..] (joined with bytes kept from earlier
   * pushes) and validates it. Returns the index after the header, or len
   * with state still HEADER when the header is incomplete.
   */
  private readHeader(buf: Uint8Array, i: number): number {
    const h = this.header;
    let have = this.headerBytes;
    // Copy just enough bytes to know the header's size, then the rest of it.
    let need = 2;
    for (;;) {
      while (have < need && i < buf.length) h[have++] = buf[i++] as number;
      if (have < need) {
        this.headerBytes = have;
        return i;
      }
      const size = headerSize(h);
      if (need === size) break;
      need = size;
    }
    this.headerBytes = 0;
    this.startFrame(h);
    return i;
  }

  private startFrame(h: Uint8Array): void {
    const b0 = h[0] as number;
    const b1 = h[1] as number;
    if ((b0 & 0x70) !== 0) fail(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension");
    const opcode = b0 & 0x0f;
    const fin = (b0 & 0x80) !== 0;
    const masked = (b1 & 0x80) !== 0;
    if (masked !== this.expectMasked) {
      fail(CLOSE_PROTOCOL_ERROR, masked ? "masked frame from a server" : "unmasked frame from a client");
    }
    let length = b1 & 0x7f;
    let at = 2;
    if (length === 126) {
      length = ((h[2] as number) << 8) | (h[3] as number);
      if (length < 126) fail(CLOSE_PROTOCOL_ERROR, "non-minimal 16-bit payload length");
      at = 4;
    } else if (length === 127) {
      const high =
        (((h[2] as number) << 24) | ((h[3] as number) << 16) | ((h[4] as number) << 8) | (h[5] as number)) >>>
        0;
      const low =
        (((h[6] as number) << 24) | ((h[7] as number) << 16) | ((h[8] as number) << 8) | (h[9] as number)) >>>
        0;
      if (high >= 0x80000000) fail(CLOSE_PROTOCOL_ERROR, "64-bit payload length with the top bit set");
      length = high * 0x100000000 + low;
      if (length < 0x10000) fail(CLOSE_PROTOCOL_ERROR, "non-minimal 64-bit payload length");
      at = 10;
    }
    if (opcode >= OP_CLOSE) {
      if (opcode > OP_PONG) fail(CLOSE_PROTOCOL_ERROR, `unknown opcode ${opcode}`);
      if (!fin) fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame");
      if (length > MAX_CONTROL_PAYLOAD) fail(CLOSE_PROTOCOL_ERROR, "control frame payload over 125 bytes");
    } else if (opcode === OP_CONTINUATION) {
      if (this.messageOpcode === 0) fail(CLOSE_PROTOCOL_ERROR, "continuation frame without a message");
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.messageOpcode !== 0) fail(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one");
      this.messageOpcode = opcode;
      this.messageBytes = 0;
    } else {
      fail(CLOSE_PROTOCOL_ERROR, `unknown opcode ${opcode}`);
    }
    if (opcode < OP_CLOSE) {
      // Checked on the header, before any payload is buffered.
      this.messageBytes += length;
      if (this.messageBytes > this.maxMessageBytes) {
        fail(CLOSE_TOO_BIG, `message over ${this.maxMessageBytes} bytes`);
      }
    }
    if (masked) this.maskKey.set(h.subarray(at, at + 4));
    this.opcode = opcode;
    this.fin = fin;
    this.masked = masked;
    this.maskPhase = 0;
    this.remaining = length;
    this.state = PAYLOAD;
  }

  private endFrame(handler: FrameHandler): void {
    this.state = HEADER;
    const opcode = this.opcode;
    if (opcode >= OP_CLOSE) {
      const payload = join(this.control, -1);
      this.control.length = 0;
      if (opcode === OP_PING) handler.ping(payload);
      else if (opcode === OP_PONG) handler.pong(payload);
      else this.endClose(payload, handler);
      return;
    }
    if (!this.fin) return;
    const data = join(this.fragments, this.messageBytes);
    this.fragments.length = 0;
    const messageOpcode = this.messageOpcode;
    this.messageOpcode = 0;
    if (messageOpcode === OP_BINARY) handler.binary(data);
    else handler.text(utf8(data, "text message"));
  }

  /** Close payload: empty, or a 2-byte code and a UTF-8 reason (RFC 6455 5.5.1). */
  private endClose(payload: Uint8Array, handler: FrameHandler): void {
    this.state = CLOSED;
    if (payload.length === 0) {
      handler.close(null, "");
      return;
    }
    if (payload.length === 1) fail(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload");
    const code = ((payload[0] as number) << 8) | (payload[1] as number);
    if (!isValidCloseCode(code)) fail(CLOSE_PROTOCOL_ERROR, `invalid close code ${code}`);
    handler.close(code, utf8(payload.subarray(2), "close reason"));
  }
}

/** Size of the header that starts with h[0], h[1]: 2, plus 2 or 8 length bytes, plus 4 mask bytes. */
function headerSize(h: Uint8Array): number {
  const b1 = h[1] as number;
  const length = b1 & 0x7f;
  return 2 + (length === 126 ? 2 : length === 127 ? 8 : 0) + (b1 & 0x80 ? 4 : 0);
}

function join(pieces: Uint8Array[], total: number): Uint8Array {
  if (pieces.length === 1) return pieces[0] as Uint8Array;
  if (pieces.length === 0) return new Uint8Array(0);
  return total < 0 ? Buffer.concat(pieces) : Buffer.concat(pieces, total);
}

function utf8(bytes: Uint8Array, what: string): string {
  try {
    return fatalUtf8.decode(bytes);
  } catch {
    return fail(CLOSE_INVALID_PAYLOAD, `${what} is not valid UTF-8`);
  }
}

function fail(code: number, message: string): never {
  throw new FrameError(code, message);
}
