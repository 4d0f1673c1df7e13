/**
 * The response reader without sockets: bytes in, the head, body chunks and
 * the end out, however the bytes are split.
 */
import { describe, expect, test } from "bun:test";
import { HttpParseError } from "../../src/proxy/upstream/parser.ts";
import { IDLE, type ResponseEvents, ResponseReader } from "../../src/proxy/upstream/response-reader.ts";

/** Records the events, the body as text. */
function recorder() {
  const seen: string[] = [];
  const events: ResponseEvents = {
    responded: (head, body, clean) =>
      seen.push(`whole ${head.status} ${body === null ? "null" : Buffer.from(body).toString()} ${clean}`),
    bodyStarts: (head) => seen.push(`starts ${head.status}`),
    bodyChunk: (bytes) => seen.push(`chunk ${Buffer.from(bytes).toString()}`),
    bodyEnds: (clean) => seen.push(`ends ${clean}`),
  };
  return { seen, events };
}

/** Feeds `text` in pieces of `size` bytes (0: at once). */
function feed(reader: ResponseReader, events: ResponseEvents, text: string, size = 0) {
  const bytes = Buffer.from(text, "latin1");
  if (size === 0) reader.push(bytes, events);
  else for (let i = 0; i < bytes.length; i += size) reader.push(bytes.subarray(i, i + size), events);
}

/** The streamed chunks joined, so a test reads the same however the bytes were split. */
const joined = (seen: string[]) => {
  const out: string[] = [];
  for (const s of seen) {
    const last = out.at(-1);
    if (s.startsWith("chunk ") && last?.startsWith("chunk ")) out[out.length - 1] = last + s.slice(6);
    else out.push(s);
  }
  return out;
};

describe("ResponseReader", () => {
  const fixedLength = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
  const chunked =
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

  test("a body that arrives with its head is one event, and the reader is idle after it", () => {
    const r = new ResponseReader(64 * 1024);
    const { seen, events } = recorder();
    r.expect(false);
    feed(r, events, fixedLength);
    expect(seen).toEqual(["whole 200 hello true"]);
    expect(r.state).toBe(IDLE);
  });

  for (const size of [1, 2, 7, 40]) {
    test(`split every ${size} byte(s), the same response streams and ends`, () => {
      const r = new ResponseReader(64 * 1024);
      const { seen, events } = recorder();
      r.expect(false);
      feed(r, events, fixedLength, size);
      const got = joined(seen);
      // Split before the body is complete, the body streams; otherwise it arrives whole.
      if (got[0]?.startsWith("whole")) expect(got).toEqual(["whole 200 hello true"]);
      else expect(got).toEqual(["starts 200", "chunk hello", "ends true"]);
    });

    test(`a chunked body split every ${size} byte(s) streams and ends`, () => {
      const r = new ResponseReader(64 * 1024);
      const { seen, events } = recorder();
      r.expect(false);
      feed(r, events, chunked, size);
      const got = joined(seen);
      if (got[0]?.startsWith("whole")) expect(got).toEqual(["whole 200 hello world true"]);
      else expect(got).toEqual(["starts 200", "chunk hello world", "ends true"]);
    });
  }

  test("interim 1xx answers are skipped; the final one is read", () => {
    const r = new ResponseReader(64 * 1024);
    const { seen, events } = recorder();
    r.expect(false);
    feed(
      r,
      events,
      `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n${fixedLength}`,
    );
    expect(seen).toEqual(["whole 200 hello true"]);
  });

  test("the response to HEAD has no body, whatever its Content-Length says", () => {
    const r = new ResponseReader(64 * 1024);
    const { seen, events } = recorder();
    r.expect(true);
    feed(r, events, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    expect(seen).toEqual(["whole 200 null true"]);
  });

  test("bytes after a complete response make it unclean (the two sides disagree on framing)", () => {
    const r = new ResponseReader(64 * 1024);
    const { seen, events } = recorder();
    r.expect(false);
    feed(r, events, `${fixedLength}EXTRA`);
    expect(seen).toEqual(["whole 200 hello false"]);
  });

  test("a body without framing is read until the backend closes cleanly", () => {
    const r = new ResponseReader(64 * 1024);
    const { seen, events } = recorder();
    r.expect(false);
    feed(r, events, "HTTP/1.1 200 OK\r\n\r\nsome");
    feed(r, events, " more");
    expect(r.framing).toBe("close");
    expect(r.closedCleanly(events)).toBe(true);
    expect(seen).toEqual(["starts 200", "chunk some", "chunk  more", "ends false"]);
    expect(r.closedCleanly(events)).toBe(false);
  });

  test("a head over the limit, a 101 and garbage are parse errors", () => {
    const cases = [
      `HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(200)}\r\n\r\n`,
      "HTTP/1.1 101 Switching Protocols\r\n\r\n",
      "SSH-2.0-OpenSSH\r\n\r\n",
    ];
    for (const text of cases) {
      const r = new ResponseReader(128);
      r.expect(false);
      expect(() => feed(r, recorder().events, text)).toThrow(HttpParseError);
    }
  });

  test("a reader reset between responses reads the next one from scratch", () => {
    const r = new ResponseReader(64 * 1024);
    const { seen, events } = recorder();
    r.expect(false);
    feed(r, events, "HTTP/1.1 200 OK\r\nContent-");
    r.reset();
    r.expect(false);
    feed(r, events, fixedLength);
    expect(seen).toEqual(["whole 200 hello true"]);
  });
});
