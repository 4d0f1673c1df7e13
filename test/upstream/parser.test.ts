import { describe, expect, test } from "bun:test";
import {
  bodyFraming,
  ChunkedDecoder,
  findHeadEnd,
  HttpParseError,
  parseResponseHead,
  type ResponseHead,
  spelled,
  spellings,
} from "../../src/proxy/upstream/parser.ts";

const bytes = (s: string) => Buffer.from(s, "latin1");

function parse(head: string): ResponseHead {
  const buf = bytes(head);
  return parseResponseHead(buf, 0, buf.length);
}

describe("findHeadEnd", () => {
  test.each([
    ["HTTP/1.1 200 OK\r\n\r\n", 0, 19],
    ["HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", 0, 25],
    ["HTTP/1.1 200 OK\r\nA: b\r\n", 0, -1],
    ["HTTP/1.1 200 OK\r\nA: b\r\n\r", 0, -1],
    // resuming the search three bytes before the previous end finds a CRLFCRLF split across reads
    ["xx\r\n\r\n", 1, 6],
  ])("%j from %d → %d", (input, from, end) => {
    expect(findHeadEnd(bytes(input), from)).toBe(end);
  });

  test("a head with bare LF line ends is refused at once", () => {
    expect(() => findHeadEnd(bytes("HTTP/1.1 200 OK\nA: b\n\n"), 0)).toThrow(HttpParseError);
    expect(() => findHeadEnd(bytes("HTTP/1.1 200 OK\r\n\n"), 0)).toThrow(HttpParseError);
  });

  test("works on a plain Uint8Array", () => {
    expect(findHeadEnd(new Uint8Array(bytes("HTTP/1.1 200 OK\r\n\r\n")), 0)).toBe(19);
  });
});

describe("parseResponseHead: valid heads", () => {
  test("status line, headers in order, OWS trimmed", () => {
    const head = parse(
      "HTTP/1.1 404 Not Found\r\nContent-Type:\t text/plain \r\nX-Empty:\r\nX-A: a b\r\n\r\n",
    );
    expect(head.minor).toBe(1);
    expect(head.status).toBe(404);
    expect(head.statusText).toBe("Not Found");
    expect(head.headers).toEqual([
      ["Content-Type", "text/plain"],
      ["X-Empty", ""],
      ["X-A", "a b"],
    ]);
    expect(head.contentLength).toBeNull();
    expect(head.chunked).toBe(false);
    expect(head.close).toBe(false);
  });

  test.each([
    ["HTTP/1.1 200 OK\r\n\r\n", "OK"],
    ["HTTP/1.1 200 \r\n\r\n", ""],
    ["HTTP/1.1 200\r\n\r\n", ""],
    ["HTTP/1.1 599 Odd\tbut fine\r\n\r\n", "Odd\tbut fine"],
    ["HTTP/1.1 200 caf\xe9\r\n\r\n", "caf\xe9"],
  ])("reason phrase of %j", (input, reason) => {
    expect(parse(input).statusText).toBe(reason);
  });

  test("obs-text bytes map one to one onto Latin-1 characters (not windows-1252)", () => {
    const head = parse("HTTP/1.1 200 OK\r\nX: \x80\x9f\xff\r\n\r\n");
    expect([...(head.headers[0]?.[1] ?? "")].map((c) => c.charCodeAt(0))).toEqual([0x80, 0x9f, 0xff]);
  });

  test("a head that starts inside a larger buffer", () => {
    const buf = bytes("junkHTTP/1.1 201 Created\r\nA: 1\r\n\r\nbody");
    const head = parseResponseHead(buf, 4, findHeadEnd(buf, 4));
    expect(head.status).toBe(201);
    expect(head.headers).toEqual([["A", "1"]]);
  });

  test.each([
    ["Content-Length: 42", 42],
    ["content-length: 42\r\nCONTENT-LENGTH: 42", 42],
    ["Content-Length: 42, 42", 42],
    ["Content-Length: 007", 7],
    ["Content-Length: 0", 0],
    ["Content-Length: 999999999999999", 999999999999999],
  ])("%j → contentLength %d", (field, length) => {
    expect(parse(`HTTP/1.1 200 OK\r\n${field}\r\n\r\n`).contentLength).toBe(length);
  });

  test.each(["Transfer-Encoding: chunked", "transfer-encoding: CHUNKED", "Transfer-Encoding: , chunked"])(
    "%j is chunked",
    (field) => {
      expect(parse(`HTTP/1.1 200 OK\r\n${field}\r\n\r\n`).chunked).toBe(true);
    },
  );

  test.each([
    ["HTTP/1.1", "Connection: close", true],
    ["HTTP/1.1", "Connection: keep-alive, CLOSE", true],
    ["HTTP/1.1", "Connection: keep-alive", false],
    ["HTTP/1.1", "Connection: closed", false],
    ["HTTP/1.0", "Connection: keep-alive", true],
    ["HTTP/1.2", "X: y", false],
  ])("%s with %j: close %p", (version, field, close) => {
    expect(parse(`${version} 200 OK\r\n${field}\r\n\r\n`).close).toBe(close);
  });
});

describe("spellings: strings for common byte runs, without slicing", () => {
  const hashOf = (word: string, fold: boolean) => {
    let h = 0;
    for (const c of Buffer.from(word, "latin1")) h = (Math.imul(h, 31) + (fold ? c | 0x20 : c)) | 0;
    return h;
  };
  const find = (table: ReturnType<typeof spellings>, word: string, fold: boolean) =>
    spelled(table, bytes(word), 0, word.length, hashOf(word, fold));

  test("an exact table answers only the spelling it holds", () => {
    const table = spellings(["Content-Type", "OK"], false);
    expect(find(table, "Content-Type", false)).toBe("Content-Type");
    expect(find(table, "content-type", false)).toBeUndefined();
    expect(find(table, "OK", false)).toBe("OK");
    expect(find(table, "Ok", false)).toBeUndefined();
  });

  test("a folding table answers any letter case with the lowercase word, and nothing else", () => {
    const table = spellings(["content-length", "host"], true);
    expect(find(table, "Content-Length", true)).toBe("content-length");
    expect(find(table, "HOST", true)).toBe("host");
    // "_" folds to DEL, never to "-": a look-alike is not taken for the real name.
    expect(find(table, "Content_Length", true)).toBeUndefined();
    expect(find(table, "hosts", true)).toBeUndefined();
  });

  test("the response parser keeps every name as the server spelled it", () => {
    const head = parse("HTTP/1.1 200 OK\r\ncontent-type: a\r\nCONTENT-LENGTH: 0\r\nDate: d\r\n\r\n");
    expect(head.headers.map(([n]) => n)).toEqual(["content-type", "CONTENT-LENGTH", "Date"]);
    expect(head.statusText).toBe("OK");
  });
});

describe("parseResponseHead: refused heads", () => {
  test.each([
    ["not HTTP", "FTP/1.1 200 OK\r\n\r\n"],
    ["HTTP/2", "HTTP/2.0 200 OK\r\n\r\n"],
    ["lowercase protocol", "http/1.1 200 OK\r\n\r\n"],
    ["minor version not a digit", "HTTP/1.x 200 OK\r\n\r\n"],
    ["two spaces", "HTTP/1.1  200 OK\r\n\r\n"],
    ["status below 100", "HTTP/1.1 099 Low\r\n\r\n"],
    ["status above 599", "HTTP/1.1 600 High\r\n\r\n"],
    ["four-digit status", "HTTP/1.1 2000 OK\r\n\r\n"],
    ["letters in the status", "HTTP/1.1 2x0 OK\r\n\r\n"],
    ["control byte in the reason", "HTTP/1.1 200 O\x01K\r\n\r\n"],
    ["obs-fold", "HTTP/1.1 200 OK\r\nA: 1\r\n 2\r\n\r\n"],
    ["obs-fold with a tab", "HTTP/1.1 200 OK\r\nA: 1\r\n\t2\r\n\r\n"],
    ["whitespace before the colon", "HTTP/1.1 200 OK\r\nA : 1\r\n\r\n"],
    ["no colon", "HTTP/1.1 200 OK\r\nA\r\n\r\n"],
    ["empty name", "HTTP/1.1 200 OK\r\n: 1\r\n\r\n"],
    ["separator in the name", "HTTP/1.1 200 OK\r\nA/B: 1\r\n\r\n"],
    ["bare CR in a value", "HTTP/1.1 200 OK\r\nA: 1\r2\r\n\r\n"],
    ["bare LF in a value", "HTTP/1.1 200 OK\r\nA: 1\n2\r\n\r\n"],
    ["NUL in a value", "HTTP/1.1 200 OK\r\nA: 1\x002\r\n\r\n"],
    ["DEL in a value", "HTTP/1.1 200 OK\r\nA: 1\x7f\r\n\r\n"],
    ["differing Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"],
    ["differing Content-Length list", "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"],
    ["empty Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"],
    ["signed Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n"],
    ["hex Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n"],
    ["Content-Length with inner space", "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n"],
    ["Content-Length too large", "HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999\r\n\r\n"],
    ["Content-Length with obs-text padding", "HTTP/1.1 200 OK\r\nContent-Length: 5\xa0\r\n\r\n"],
    ["TE and CL", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"],
    ["TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"],
    ["TE gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"],
    ["TE identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"],
    ["TE chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"],
    ["TE empty", "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n"],
    ["TE with obs-text padding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\xa0\r\n\r\n"],
    ["TE in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"],
  ])("%s", (_name, input) => {
    expect(() => parse(input)).toThrow(HttpParseError);
  });

  test("a head that does not end with the empty line", () => {
    const buf = bytes("HTTP/1.1 200 OK\r\nA: 1\r\n");
    expect(() => parseResponseHead(buf, 0, buf.length)).toThrow(HttpParseError);
  });
});

describe("bodyFraming (RFC 9112 6.3)", () => {
  test.each([
    ["HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, "none"],
    ["HTTP/1.1 103 Early Hints\r\n\r\n", false, "none"],
    ["HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false, "none"],
    ["HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false, "none"],
    ["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, "none"],
    ["HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, "length"],
    ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, "chunked"],
    ["HTTP/1.1 200 OK\r\n\r\n", false, "close"],
    ["HTTP/1.0 200 OK\r\n\r\n", false, "close"],
  ] as const)("%j (HEAD request: %p) → %s", (input, isHead, framing) => {
    expect(bodyFraming(parse(input), isHead)).toBe(framing);
  });
});

describe("ChunkedDecoder", () => {
  /** Decodes input fed in pieces of `step` bytes; returns the payload and the end offset in the last piece. */
  function decode(
    input: string,
    step = Number.POSITIVE_INFINITY,
  ): { payload: string; end: number; rest: string } {
    const decoder = new ChunkedDecoder(1024);
    const buf = bytes(input);
    const out: Uint8Array[] = [];
    for (let i = 0; i < buf.length; i += step) {
      const piece = buf.subarray(i, Math.min(buf.length, i + step));
      const end = decoder.decode(piece, 0, out);
      if (end >= 0) {
        return {
          payload: Buffer.concat(out).toString("latin1"),
          end: i + end,
          rest: buf.subarray(i + end).toString("latin1"),
        };
      }
    }
    return { payload: Buffer.concat(out).toString("latin1"), end: -1, rest: "" };
  }

  test.each([
    ["single chunk", "5\r\nhello\r\n0\r\n\r\n", "hello"],
    ["several chunks, hex sizes", "5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n", "hello0123456789"],
    ["uppercase hex and leading zeros", "00A\r\n0123456789\r\n000\r\n\r\n", "0123456789"],
    ["extensions", '5;a=1;b="x y"\r\nhello\r\n0;last\r\n\r\n', "hello"],
    ["whitespace before an extension", "5 \t;a\r\nhello\r\n0\r\n\r\n", "hello"],
    ["trailers", "5\r\nhello\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n", "hello"],
    ["empty body", "0\r\n\r\n", ""],
    ["CRLF inside the data", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "\r\n\r\n"],
  ])("%s", (_name, input, payload) => {
    for (const step of [Number.POSITIVE_INFINITY, 1, 2, 3, 7]) {
      const result = decode(input, step);
      expect(result.payload).toBe(payload);
      expect(result.end).toBe(input.length);
    }
  });

  test("stops at the end of the body and reports where", () => {
    const result = decode("2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n");
    expect(result.payload).toBe("ok");
    expect(result.rest).toBe("HTTP/1.1 200 OK\r\n");
  });

  test("payload pieces are views into the input, not copies", () => {
    const buf = bytes("5\r\nhello\r\n0\r\n\r\n");
    const out: Uint8Array[] = [];
    new ChunkedDecoder().decode(buf, 0, out);
    expect(out).toHaveLength(1);
    expect(out[0]?.buffer).toBe(buf.buffer);
  });

  test("needs more input: -1", () => {
    expect(decode("5\r\nhel").end).toBe(-1);
    expect(decode("5\r\nhello\r\n0\r\n").end).toBe(-1);
  });

  test.each([
    ["no size", "\r\nhello\r\n"],
    ["not hex", "g\r\n"],
    ["negative", "-5\r\n"],
    ["space inside the size", "1 2\r\n"],
    ["trailing whitespace without an extension", "5 \r\nhello\r\n"],
    ["bare LF after the size", "5\nhello\r\n"],
    ["bare CR after the size", "5\rhello\r\n"],
    ["data longer than the size", "2\r\nokX\r\n"],
    ["missing CR after data", "2\r\nok\n"],
    ["missing LF after data", "2\r\nok\r\r"],
    ["control byte in an extension", "2;a\x01\r\nok\r\n"],
    ["size too large", "1000000000000\r\n"],
    ["size line too long", `1;${"x".repeat(5000)}\r\n`],
    ["obs-fold in trailers", "0\r\nA: 1\r\n 2\r\n\r\n"],
    ["bare LF in trailers", "0\r\nA: 1\n\r\n"],
    ["NUL in trailers", "0\r\nA: \0\r\n\r\n"],
    ["bare LF ending the trailers", "0\r\n\n"],
    ["trailers too large", `0\r\nA: ${"x".repeat(2000)}\r\n\r\n`],
  ])("refuses %s", (_name, input) => {
    for (const step of [Number.POSITIVE_INFINITY, 1])
      expect(() => decode(input, step)).toThrow(HttpParseError);
  });

  test("reset() makes a decoder reusable", () => {
    const decoder = new ChunkedDecoder();
    const out: Uint8Array[] = [];
    expect(decoder.decode(bytes("1\r\na\r\n0\r\n\r\n"), 0, out)).toBe(11);
    decoder.reset();
    out.length = 0;
    expect(decoder.decode(bytes("1\r\nb\r\n0\r\n\r\n"), 0, out)).toBe(11);
    expect(Buffer.concat(out).toString()).toBe("b");
  });
});
