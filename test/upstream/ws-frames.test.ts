import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  closePayload,
  encodeFrame,
  FrameDecoder,
  FrameError,
  type FrameHandler,
  OP_BINARY,
  OP_CLOSE,
  OP_PING,
  OP_PONG,
  OP_TEXT,
  type SendOpcode,
} from "../../src/proxy/upstream/ws-frames.ts";

type Event =
  | ["text", string]
  | ["binary", number[]]
  | ["ping", number[]]
  | ["pong", number[]]
  | ["close", number | null, string];

/** A handler that records what the decoder reported. */
function recorder(): FrameHandler & { events: Event[] } {
  const events: Event[] = [];
  return {
    events,
    text: (data) => events.push(["text", data]),
    binary: (data) => events.push(["binary", [...data]]),
    ping: (payload) => events.push(["ping", [...payload]]),
    pong: (payload) => events.push(["pong", [...payload]]),
    close: (code, reason) => events.push(["close", code, reason]),
  };
}

interface RawFrame {
  fin?: boolean;
  /** The three reserved bits, 0-7. */
  rsv?: number;
  opcode: number;
  payload?: Uint8Array | string | number[];
  mask?: number[];
  /** Force a length form: 7-bit, 16-bit or 64-bit (may be non-minimal); the value may also be overridden. */
  lengthForm?: 7 | 16 | 64;
  length?: number | bigint;
}

/** Builds any frame, including ones the encoder refuses to make. */
function frame(f: RawFrame): Uint8Array {
  const payload = typeof f.payload === "string" ? Buffer.from(f.payload) : Buffer.from(f.payload ?? []);
  const length = BigInt(f.length ?? payload.length);
  const form = f.lengthForm ?? (payload.length < 126 ? 7 : payload.length < 65536 ? 16 : 64);
  const bytes: number[] = [((f.fin ?? true) ? 0x80 : 0) | ((f.rsv ?? 0) << 4) | f.opcode];
  const maskBit = f.mask ? 0x80 : 0;
  if (form === 7) bytes.push(maskBit | Number(length));
  else if (form === 16) bytes.push(maskBit | 126, Number(length >> 8n) & 0xff, Number(length) & 0xff);
  else {
    bytes.push(maskBit | 127);
    for (let shift = 56n; shift >= 0n; shift -= 8n) bytes.push(Number((length >> shift) & 0xffn));
  }
  const body = Buffer.from(payload);
  if (f.mask) {
    bytes.push(...f.mask);
    for (let i = 0; i < body.length; i++) body[i] = (body[i] as number) ^ (f.mask[i & 3] as number);
  }
  return Buffer.concat([Buffer.from(bytes), body]);
}

function decodeAll(bytes: Uint8Array, maxMessageBytes = 1 << 20): Event[] {
  const handler = recorder();
  new FrameDecoder({ maxMessageBytes }).push(bytes, handler);
  return handler.events;
}

function decodeError(bytes: Uint8Array, maxMessageBytes = 1 << 20): FrameError {
  try {
    decodeAll(bytes, maxMessageBytes);
  } catch (err) {
    if (err instanceof FrameError) return err;
    throw err;
  }
  throw new Error("expected a FrameError");
}

const cat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));
const bytesOf = (n: number, fill = 0x61) => new Uint8Array(n).fill(fill);

describe("encodeFrame", () => {
  test("masks a client frame with the given key (RFC 6455 5.7 example)", () => {
    const out = encodeFrame(OP_TEXT, "Hello", new Uint8Array([0x37, 0xfa, 0x21, 0x3d]));
    expect([...out]).toEqual([0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
  });

  test("writes an unmasked frame when mask is null (RFC 6455 5.7 example)", () => {
    expect([...encodeFrame(OP_TEXT, "Hello", null)]).toEqual([0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
  });

  test.each([
    { what: "125 bytes: 7-bit length", n: 125, header: [0x82, 125] },
    { what: "126 bytes: 16-bit length", n: 126, header: [0x82, 126, 0x00, 0x7e] },
    { what: "65535 bytes: 16-bit length", n: 65535, header: [0x82, 126, 0xff, 0xff] },
    { what: "65536 bytes: 64-bit length", n: 65536, header: [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0] },
  ])("$what", ({ n, header }) => {
    const out = encodeFrame(OP_BINARY, bytesOf(n), null);
    expect([...out.subarray(0, header.length)]).toEqual([...header]);
    expect(out.length).toBe(header.length + n);
  });

  test("a random mask is set and differs from frame to frame", () => {
    const keys = new Set<string>();
    for (let i = 0; i < 50; i++) {
      const out = encodeFrame(OP_BINARY, bytesOf(8), "random");
      expect(out[1]).toBe(0x80 | 8);
      keys.add(Buffer.from(out.subarray(2, 6)).toString("hex"));
    }
    expect(keys.size).toBeGreaterThan(45);
  });

  test("masking leaves the caller's payload untouched", () => {
    const payload = bytesOf(100);
    encodeFrame(OP_BINARY, payload);
    expect(payload.every((b) => b === 0x61)).toBe(true);
  });

  test("text is written as UTF-8", () => {
    const handler = recorder();
    new FrameDecoder({ maxMessageBytes: 100, expectMasked: true }).push(
      encodeFrame(OP_TEXT, "zürich ✓ 🎉"),
      handler,
    );
    expect(handler.events).toEqual([["text", "zürich ✓ 🎉"]]);
  });

  test("a control frame over 125 bytes is refused", () => {
    expect(() => encodeFrame(OP_PING, bytesOf(126))).toThrow(RangeError);
    expect(() => encodeFrame(OP_CLOSE, bytesOf(126))).toThrow(RangeError);
  });
});

describe("closePayload", () => {
  test.each([
    { what: "no code: empty payload", args: [] as [number?, string?], bytes: [] },
    { what: "code only", args: [1000] as [number?, string?], bytes: [0x03, 0xe8] },
    {
      what: "code and reason",
      args: [4001, "bye"] as [number?, string?],
      bytes: [0x0f, 0xa1, 0x62, 0x79, 0x65],
    },
  ])("$what", ({ args, bytes }) => {
    expect([...closePayload(...args)]).toEqual([...bytes]);
  });

  test.each([
    { what: "1005 (reserved: no status)", code: 1005 },
    { what: "1006 (reserved: abnormal)", code: 1006 },
    { what: "1015 (reserved: TLS failure)", code: 1015 },
    { what: "999 (below the range)", code: 999 },
    { what: "2000 (unassigned)", code: 2000 },
    { what: "5000 (above the range)", code: 5000 },
  ])("refuses code $what", ({ code }) => {
    expect(() => closePayload(code)).toThrow(RangeError);
  });

  test("refuses a reason that does not fit a control frame", () => {
    expect(() => closePayload(1000, "x".repeat(123))).not.toThrow();
    expect(() => closePayload(1000, "x".repeat(124))).toThrow(RangeError);
  });
});

describe("FrameDecoder: well-formed server frames", () => {
  const cases: { what: string; bytes: Uint8Array; events: Event[] }[] = [
    { what: "a text message", bytes: frame({ opcode: 1, payload: "hello" }), events: [["text", "hello"]] },
    { what: "an empty binary message", bytes: frame({ opcode: 2 }), events: [["binary", []]] },
    {
      what: "a 16-bit length",
      bytes: frame({ opcode: 2, payload: bytesOf(300, 7) }),
      events: [["binary", Array(300).fill(7)]],
    },
    {
      what: "a 64-bit length",
      bytes: frame({ opcode: 2, payload: bytesOf(70_000, 9) }),
      events: [["binary", Array(70_000).fill(9)]],
    },
    {
      what: "a text message in three fragments",
      bytes: cat(
        frame({ opcode: 1, fin: false, payload: "he" }),
        frame({ opcode: 0, fin: false, payload: "ll" }),
        frame({ opcode: 0, payload: "o" }),
      ),
      events: [["text", "hello"]],
    },
    {
      what: "a UTF-8 character split across fragments",
      bytes: cat(
        frame({ opcode: 1, fin: false, payload: Buffer.from("€").subarray(0, 1) }),
        frame({ opcode: 0, payload: Buffer.from("€").subarray(1) }),
      ),
      events: [["text", "€"]],
    },
    {
      what: "control frames between fragments, reported first",
      bytes: cat(
        frame({ opcode: 2, fin: false, payload: [1] }),
        frame({ opcode: 9, payload: "p" }),
        frame({ opcode: 0, fin: false, payload: [2] }),
        frame({ opcode: 10, payload: "q" }),
        frame({ opcode: 0, payload: [3] }),
      ),
      events: [
        ["ping", [0x70]],
        ["pong", [0x71]],
        ["binary", [1, 2, 3]],
      ],
    },
    {
      what: "an empty final continuation frame",
      bytes: cat(frame({ opcode: 1, fin: false, payload: "ab" }), frame({ opcode: 0 })),
      events: [["text", "ab"]],
    },
    {
      what: "a close frame with a code and a reason",
      bytes: frame({ opcode: 8, payload: closePayload(4000, "going away ✓") }),
      events: [["close", 4000, "going away ✓"]],
    },
    { what: "a close frame with no payload", bytes: frame({ opcode: 8 }), events: [["close", null, ""]] },
    {
      what: "nothing after a close frame",
      bytes: cat(
        frame({ opcode: 8, payload: closePayload(1000) }),
        frame({ opcode: 1, payload: "late" }),
        bytesOf(3, 0xff),
      ),
      events: [["close", 1000, ""]],
    },
    {
      what: "a ping with the largest control payload",
      bytes: frame({ opcode: 9, payload: bytesOf(125, 1) }),
      events: [["ping", Array(125).fill(1)]],
    },
  ];

  test.each(cases)("$what", ({ bytes, events }) => {
    expect(decodeAll(bytes)).toEqual(events);
  });

  test.each(cases)("$what, fed one byte at a time", ({ bytes, events }) => {
    const handler = recorder();
    const decoder = new FrameDecoder({ maxMessageBytes: 1 << 20 });
    for (const b of bytes) decoder.push(new Uint8Array([b]), handler);
    expect(handler.events).toEqual(events);
  });

  test("a message exactly at the size limit passes", () => {
    expect(decodeAll(frame({ opcode: 2, payload: bytesOf(1000) }), 1000)).toHaveLength(1);
  });

  test("closed turns true with the close frame", () => {
    const decoder = new FrameDecoder({ maxMessageBytes: 10 });
    decoder.push(frame({ opcode: 1, payload: "x" }), recorder());
    expect(decoder.closed).toBe(false);
    decoder.push(frame({ opcode: 8 }), recorder());
    expect(decoder.closed).toBe(true);
  });
});

describe("FrameDecoder: frames that fail the connection", () => {
  test.each([
    {
      what: "a masked server frame",
      bytes: frame({ opcode: 1, payload: "x", mask: [1, 2, 3, 4] }),
      code: 1002,
    },
    { what: "RSV1 without an extension", bytes: frame({ opcode: 1, rsv: 4, payload: "x" }), code: 1002 },
    { what: "RSV3 without an extension", bytes: frame({ opcode: 2, rsv: 1 }), code: 1002 },
    { what: "reserved data opcode 3", bytes: frame({ opcode: 3 }), code: 1002 },
    { what: "reserved control opcode 0xB", bytes: frame({ opcode: 0xb }), code: 1002 },
    { what: "a fragmented ping", bytes: frame({ opcode: 9, fin: false }), code: 1002 },
    { what: "a ping over 125 bytes", bytes: frame({ opcode: 9, payload: bytesOf(126) }), code: 1002 },
    {
      what: "a close with a 16-bit length",
      bytes: frame({ opcode: 8, payload: bytesOf(2), lengthForm: 16 }),
      code: 1002,
    },
    {
      what: "a non-minimal 16-bit length",
      bytes: frame({ opcode: 2, payload: bytesOf(5), lengthForm: 16 }),
      code: 1002,
    },
    {
      what: "a non-minimal 64-bit length",
      bytes: frame({ opcode: 2, payload: bytesOf(200), lengthForm: 64 }),
      code: 1002,
    },
    {
      what: "a 64-bit length with the top bit set",
      bytes: frame({ opcode: 2, lengthForm: 64, length: 1n << 63n }),
      code: 1002,
    },
    { what: "a continuation without a message", bytes: frame({ opcode: 0, payload: "x" }), code: 1002 },
    {
      what: "a new message inside a fragmented one",
      bytes: cat(frame({ opcode: 1, fin: false, payload: "a" }), frame({ opcode: 1, payload: "b" })),
      code: 1002,
    },
    {
      what: "invalid UTF-8 in text",
      bytes: frame({ opcode: 1, payload: Buffer.from([0xc3, 0x28]) }),
      code: 1007,
    },
    {
      what: "a text message ending mid-character",
      bytes: frame({ opcode: 1, payload: Buffer.from("€").subarray(0, 2) }),
      code: 1007,
    },
    {
      what: "a close with a 1-byte payload",
      bytes: frame({ opcode: 8, payload: bytesOf(1, 3) }),
      code: 1002,
    },
    { what: "close code 1005", bytes: frame({ opcode: 8, payload: Buffer.from([0x03, 0xed]) }), code: 1002 },
    { what: "close code 999", bytes: frame({ opcode: 8, payload: Buffer.from([0x03, 0xe7]) }), code: 1002 },
    { what: "close code 2999", bytes: frame({ opcode: 8, payload: Buffer.from([0x0b, 0xb7]) }), code: 1002 },
    {
      what: "a close reason that is not UTF-8",
      bytes: frame({ opcode: 8, payload: Buffer.from([0x03, 0xe8, 0xff]) }),
      code: 1007,
    },
    {
      what: "a message over the limit in one frame",
      bytes: frame({ opcode: 2, payload: bytesOf(1001) }),
      code: 1009,
    },
    {
      what: "a message over the limit across fragments",
      bytes: cat(
        frame({ opcode: 2, fin: false, payload: bytesOf(600) }),
        frame({ opcode: 0, payload: bytesOf(401) }),
      ),
      code: 1009,
    },
  ])("$what → $code", ({ bytes, code }) => {
    expect(decodeError(bytes, 1000).closeCode).toBe(code);
  });

  test("an oversized message fails on its header, before the payload arrives", () => {
    const header = frame({ opcode: 2, lengthForm: 64, length: 2 ** 40 });
    expect(decodeError(header, 1 << 20).closeCode).toBe(1009);
  });

  test("the error message says what was wrong", () => {
    expect(decodeError(frame({ opcode: 1, payload: "x", mask: [1, 2, 3, 4] })).message).toBe(
      "masked frame from a server",
    );
  });

  test("a decoder for client frames refuses an unmasked one", () => {
    const decoder = new FrameDecoder({ maxMessageBytes: 10, expectMasked: true });
    expect(() => decoder.push(frame({ opcode: 1, payload: "x" }), recorder())).toThrow(
      "unmasked frame from a client",
    );
  });

  test.each([
    { what: "maxMessageBytes 0", max: 0 },
    { what: "maxMessageBytes NaN", max: Number.NaN },
  ])("options are checked: $what", ({ max }) => {
    expect(() => new FrameDecoder({ maxMessageBytes: max })).toThrow("maxMessageBytes");
  });
});

// --- properties -----------------------------------------------------------------

type Message =
  | { kind: "text"; data: string }
  | { kind: "binary"; data: Uint8Array }
  | { kind: "ping" | "pong"; data: Uint8Array };

const messageArb: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ kind: fc.constant("text" as const), data: fc.string({ unit: "grapheme", maxLength: 300 }) }),
  fc.record({
    kind: fc.constant("binary" as const),
    // Now and then one just around the 16-bit/64-bit length boundary.
    data: fc.oneof(
      { arbitrary: fc.uint8Array({ maxLength: 300 }), weight: 20 },
      { arbitrary: fc.uint8Array({ minLength: 65_530, maxLength: 65_540 }), weight: 1 },
    ),
  }),
  fc.record({
    kind: fc.constantFrom("ping" as const, "pong" as const),
    data: fc.uint8Array({ maxLength: 125 }),
  }),
);

const OPCODES: Record<Message["kind"], SendOpcode> = {
  text: OP_TEXT,
  binary: OP_BINARY,
  ping: OP_PING,
  pong: OP_PONG,
};

function expected(messages: Message[], close: [number, string]): Event[] {
  const events: Event[] = messages.map((m) => (m.kind === "text" ? ["text", m.data] : [m.kind, [...m.data]]));
  events.push(["close", ...close]);
  return events;
}

/** Cuts bytes at the given points (any order, duplicates allowed). */
function split(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const pieces: Uint8Array[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    pieces.push(bytes.subarray(from, p));
    from = p;
  }
  return pieces;
}

const closeArb = fc.tuple(
  fc.oneof(
    fc.integer({ min: 1000, max: 1003 }),
    fc.integer({ min: 1007, max: 1014 }),
    fc.integer({ min: 3000, max: 4999 }),
  ),
  fc.string({ maxLength: 30 }),
);

describe("FrameDecoder properties", () => {
  test.each([
    { what: "masked client frames", mask: "random" as const, expectMasked: true },
    { what: "unmasked server frames", mask: null, expectMasked: false },
  ])("encode then decode, split anywhere, gives the messages back ($what)", ({ mask, expectMasked }) => {
    fc.assert(
      fc.property(
        fc.array(messageArb, { maxLength: 8 }),
        closeArb,
        fc.array(fc.nat(), { maxLength: 12 }),
        (messages, close, cuts) => {
          const frames = messages.map((m) => encodeFrame(OPCODES[m.kind], m.data, mask));
          frames.push(encodeFrame(OP_CLOSE, closePayload(...close), mask));
          const handler = recorder();
          const decoder = new FrameDecoder({ maxMessageBytes: 1 << 20, expectMasked });
          for (const piece of split(cat(...frames), cuts)) decoder.push(piece, handler);
          expect(handler.events).toEqual(expected(messages, close));
        },
      ),
      { numRuns: 150 },
    );
  });

  test("fragmented messages with interleaved control frames, split anywhere, reassemble", () => {
    const fragmentedArb = fc.record({
      binary: fc.boolean(),
      parts: fc.array(fc.uint8Array({ maxLength: 200 }), { minLength: 1, maxLength: 5 }),
      pings: fc.array(fc.uint8Array({ maxLength: 20 }), { maxLength: 4 }),
    });
    fc.assert(
      fc.property(
        fc.array(fragmentedArb, { maxLength: 5 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (messages, cuts) => {
          const frames: Uint8Array[] = [];
          const events: Event[] = [];
          for (const m of messages) {
            // Text parts are hex so any split point is still valid UTF-8 in total.
            const parts = m.binary
              ? m.parts
              : m.parts.map((p) => Buffer.from(Buffer.from(p).toString("hex")));
            parts.forEach((part, i) => {
              frames.push(
                frame({
                  opcode: i === 0 ? (m.binary ? 2 : 1) : 0,
                  fin: i === parts.length - 1,
                  payload: part,
                }),
              );
              const ping = m.pings[i];
              if (ping !== undefined && i < parts.length - 1) {
                frames.push(frame({ opcode: 9, payload: ping }));
                events.push(["ping", [...ping]]);
              }
            });
            const whole = Buffer.concat(parts);
            events.push(m.binary ? ["binary", [...whole]] : ["text", whole.toString()]);
          }
          const handler = recorder();
          const decoder = new FrameDecoder({ maxMessageBytes: 1 << 20 });
          for (const piece of split(cat(...frames), cuts)) decoder.push(piece, handler);
          expect(handler.events).toEqual(events);
        },
      ),
      { numRuns: 150 },
    );
  });
});
