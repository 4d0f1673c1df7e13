/**
 * The HTTP/1.1 front end's response head, written from the backend's answer:
 * which fields go on, what tether adds, and how the body is framed.
 */
import { describe, expect, test } from "bun:test";
import type { Effect } from "../../src/persistence/types.ts";
import type { UpstreamResponse } from "../../src/proxy/upstream/types.ts";
import { clientResponseHead, encodeHead } from "../../src/server/h1/response-head.ts";

function answer(
  headers: [string, string][],
  body: UpstreamResponse["body"],
  contentLength: number | null = null,
) {
  return { status: 200, statusText: "OK", headers, body, contentLength } as UpstreamResponse;
}
const opts = { method: "GET", minor: 1, close: false, hsts: null };
/** The head decided, and its bytes as text. */
function headOf(...args: Parameters<typeof clientResponseHead>) {
  const head = clientResponseHead(...args);
  return { ...head, text: encodeHead(head).toString("latin1") };
}
const lines = (text: string) => text.split("\r\n");

describe("the client's response head", () => {
  test("hop-by-hop, framing and Connection-listed fields stay behind; the rest go on as sent", () => {
    const head = headOf(
      answer(
        [
          ["Content-Type", "text/plain"],
          ["Connection", "x-secret"],
          ["X-Secret", "1"],
          ["Keep-Alive", "timeout=5"],
          ["Transfer-Encoding", "chunked"],
          ["Content-Length", "2"],
          ["Alt-Svc", 'h3=":443"'],
          ["Date", "Sat, 05 Dec 2026 08:00:00 GMT"],
        ],
        new Uint8Array([104, 105]),
      ),
      [],
      opts,
    );
    expect(lines(head.text)).toEqual([
      "HTTP/1.1 200 OK",
      "Content-Type: text/plain",
      "Date: Sat, 05 Dec 2026 08:00:00 GMT",
      "content-length: 2",
      "",
      "",
    ]);
    expect(head.framing).toBe("whole");
  });

  test("Date when the backend sent none; Strict-Transport-Security unless it sent its own", () => {
    const hsts = { ...opts, hsts: "max-age=60" };
    const head = headOf(answer([], new Uint8Array()), [], hsts);
    expect(head.text).toMatch(/\r\ndate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n/);
    expect(head.text).toContain("strict-transport-security: max-age=60\r\n");
    const own = headOf(answer([["Strict-Transport-Security", "max-age=1"]], new Uint8Array()), [], hsts);
    expect(own.text).not.toContain("max-age=60");
  });

  test("persistence effects: a Set-Cookie added and Cache-Control made private", () => {
    const effects: Effect[] = [
      { kind: "set-cookie", header: "TETHER=abc; Path=/; HttpOnly" },
      { kind: "cache-private" },
    ];
    const head = headOf(
      answer(
        [
          ["Set-Cookie", "app=1"],
          ["Cache-Control", "max-age=60"],
        ],
        new Uint8Array(),
      ),
      effects,
      opts,
    );
    const got = lines(head.text);
    expect(got).toContain("set-cookie: app=1");
    expect(got).toContain("set-cookie: TETHER=abc; Path=/; HttpOnly");
    expect(got.find((l) => l.startsWith("cache-control"))).toMatch(/private/);
  });

  test("framing: a stream of known length, chunked for HTTP/1.1, close-delimited for HTTP/1.0", () => {
    const stream = () => new ReadableStream<Uint8Array>();
    expect(headOf(answer([], stream(), 10), [], opts)).toMatchObject({ framing: "length" });
    const chunked = headOf(answer([], stream()), [], opts);
    expect(chunked.framing).toBe("chunked");
    expect(chunked.text).toContain("transfer-encoding: chunked\r\n");
    const old = headOf(answer([], stream()), [], { ...opts, minor: 0 });
    expect(old).toMatchObject({ framing: "close", close: true });
    expect(old.text).toContain("connection: close\r\n");
  });

  test("HEAD, 204 and 304 carry no body; HEAD keeps the length the backend declared", () => {
    const head = headOf(answer([], null, 42), [], { ...opts, method: "HEAD" });
    expect(head.framing).toBe("none");
    expect(head.text).toContain("content-length: 42\r\n");
    const noContent = headOf({ ...answer([], null, 0), status: 204 }, [], opts);
    expect(noContent.text).not.toContain("content-length");
  });

  test("an HTTP/1.0 client that asked to keep the connection is told so; a closing one is told it closes", () => {
    expect(headOf(answer([], new Uint8Array()), [], { ...opts, minor: 0 }).text).toContain(
      "connection: keep-alive\r\n",
    );
    expect(headOf(answer([], new Uint8Array()), [], { ...opts, close: true }).text).toContain(
      "connection: close\r\n",
    );
  });
});
