/**
 * Test support: hand-built HTTP/2 frames (RFC 9113 §4, §6) over a real TLS
 * connection, for requests no HTTP/2 client library will send (connection-specific
 * fields, uppercase names, a Content-Length that disagrees with the DATA).
 *
 * Header blocks use only HPACK "literal without indexing, new name" fields
 * (RFC 7541 §6.2.2), so the encoder keeps no table and sends every byte as given.
 * Responses are decoded only as far as the tests need: the frames, and the
 * :status when it is a static-table entry or a literal of digits.
 */
import { connect, type TLSSocket } from "node:tls";

export const FRAME = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  CONTINUATION: 9,
} as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** An HPACK integer with an n-bit prefix (RFC 7541 §5.1). */
function hpackInt(value: number, prefixBits: number, firstByte = 0): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [firstByte | value];
  const out = [firstByte | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

function hpackString(s: string): number[] {
  const bytes = [...Buffer.from(s, "latin1")];
  return [...hpackInt(bytes.length, 7), ...bytes];
}

/** A header block of literal fields without indexing, names and values sent as given. */
export function headerBlock(fields: readonly (readonly [string, string])[]): Buffer {
  const out: number[] = [];
  for (const [name, value] of fields) out.push(0x00, ...hpackString(name), ...hpackString(value));
  return Buffer.from(out);
}

export function frame(
  type: number,
  flags: number,
  stream: number,
  payload: Uint8Array = Buffer.alloc(0),
): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

export const headersFrame = (
  stream: number,
  fields: readonly (readonly [string, string])[],
  endStream = true,
) => frame(FRAME.HEADERS, FLAG.END_HEADERS | (endStream ? FLAG.END_STREAM : 0), stream, headerBlock(fields));
export const dataFrame = (stream: number, data: string | Uint8Array, endStream = true) =>
  frame(
    FRAME.DATA,
    endStream ? FLAG.END_STREAM : 0,
    stream,
    typeof data === "string" ? Buffer.from(data, "latin1") : data,
  );
export const rstStream = (stream: number, code = 0x8 /* CANCEL */) => {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code);
  return frame(FRAME.RST_STREAM, 0, stream, p);
};

/** Digits in HPACK's Huffman code (RFC 7541 Appendix B): '0'-'2' take 5 bits, '3'-'9' take 6. */
function huffmanDigits(bytes: Buffer): string | null {
  let bits = "";
  for (const b of bytes) bits += b.toString(2).padStart(8, "0");
  let out = "";
  let i = 0;
  while (bits.length - i >= 5) {
    const five = Number.parseInt(bits.slice(i, i + 5), 2);
    if (five <= 2) {
      out += String(five);
      i += 5;
      continue;
    }
    if (bits.length - i < 6) break;
    const six = Number.parseInt(bits.slice(i, i + 6), 2);
    if (six < 0b011001 || six > 0b011111) break;
    out += String(six - 0b011001 + 3);
    i += 6;
  }
  // What is left must be padding: fewer than 8 one-bits.
  return /^1{0,7}$/.test(bits.slice(i)) ? out : null;
}

const STATIC_STATUS: Record<number, number> = { 8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500 };

/** The :status of a response header block, when it comes first as Bun sends it; null otherwise. */
export function statusOf(block: Buffer): number | null {
  const b = block[0] ?? 0;
  if (b & 0x80) return STATIC_STATUS[b & 0x7f] ?? null;
  // A literal whose name is static entry 8 (":status"), with or without indexing.
  const nameIndex = b & 0x40 ? b & 0x3f : b & 0x0f;
  if (nameIndex < 8 || nameIndex > 14) return null;
  const len = (block[1] ?? 0) & 0x7f;
  const value = block.subarray(2, 2 + len);
  const text = (block[1] ?? 0) & 0x80 ? huffmanDigits(value) : value.toString("latin1");
  return text && /^\d{3}$/.test(text) ? Number(text) : null;
}

export interface H2Connection {
  socket: TLSSocket;
  frames: Frame[];
  /** Set when the server closed the connection. */
  closed: boolean;
  send(...chunks: Buffer[]): void;
  /** Resolves with the first frame matching, or null after timeoutMs. */
  waitFor(pred: (f: Frame) => boolean, timeoutMs?: number): Promise<Frame | null>;
  /** What happened to a stream: its status, a reset (with its code), a GOAWAY, or nothing. */
  outcome(stream: number, timeoutMs?: number): Promise<string>;
  close(): void;
}

/** Opens TLS with ALPN h2 to 127.0.0.1:port and sends the preface and an empty SETTINGS. */
export async function h2Connect(port: number): Promise<H2Connection> {
  const socket = connect({ host: "127.0.0.1", port, ALPNProtocols: ["h2"], rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", resolve);
    socket.once("error", reject);
  });
  if (socket.alpnProtocol !== "h2") throw new Error(`ALPN chose ${socket.alpnProtocol}, not h2`);
  const frames: Frame[] = [];
  const waiters = new Set<() => void>();
  let buf = Buffer.alloc(0);
  const conn: H2Connection = {
    socket,
    frames,
    closed: false,
    send: (...chunks) => {
      if (!socket.destroyed) socket.write(Buffer.concat(chunks));
    },
    waitFor: (pred, timeoutMs = 2000) =>
      new Promise((resolve) => {
        const check = () => {
          const f = frames.find(pred);
          if (f || conn.closed) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(f ?? null);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          resolve(null);
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
    async outcome(stream, timeoutMs = 2000) {
      const f = await conn.waitFor(
        (f) =>
          (f.stream === stream && (f.type === FRAME.HEADERS || f.type === FRAME.RST_STREAM)) ||
          f.type === FRAME.GOAWAY,
        timeoutMs,
      );
      if (!f) return conn.closed ? "closed" : "no answer";
      if (f.type === FRAME.HEADERS) return `status ${statusOf(f.payload) ?? "?"}`;
      if (f.type === FRAME.RST_STREAM) return `RST_STREAM ${f.payload.readUInt32BE(0)}`;
      return `GOAWAY ${f.payload.readUInt32BE(4)}`;
    },
    close: () => socket.destroy(),
  };
  const wake = () => {
    for (const w of [...waiters]) w();
  };
  socket.on("data", (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const f: Frame = {
        type: buf[3] ?? 0,
        flags: buf[4] ?? 0,
        stream: buf.readUInt32BE(5) & 0x7fffffff,
        payload: buf.subarray(9, 9 + len),
      };
      buf = buf.subarray(9 + len);
      frames.push(f);
      if (f.type === FRAME.SETTINGS && !(f.flags & FLAG.ACK)) conn.send(frame(FRAME.SETTINGS, FLAG.ACK, 0));
    }
    wake();
  });
  socket.on("close", () => {
    conn.closed = true;
    wake();
  });
  socket.on("error", () => {});
  socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
  return conn;
}
