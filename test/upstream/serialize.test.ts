import { describe, expect, test } from "bun:test";
import { ProxyError } from "../../src/proxy/errors.ts";
import { frameChunk, requestAllowsReuse, serializeRequestHead } from "../../src/proxy/upstream/serialize.ts";
import type { UpstreamRequest } from "../../src/proxy/upstream/types.ts";

function req(over: Partial<UpstreamRequest>): UpstreamRequest {
  return { method: "GET", target: "/", fields: ["Host", "h"], body: null, bodyLength: null, ...over };
}

const stream = () => new ReadableStream<Uint8Array>();

describe("serializeRequestHead", () => {
  test.each([
    ["GET, no body", req({}), "GET / HTTP/1.1\r\nHost: h\r\n\r\n"],
    ["HEAD, no body", req({ method: "HEAD" }), "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"],
    ["POST, no body", req({ method: "POST" }), "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"],
    ["PUT, no body", req({ method: "PUT" }), "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"],
    ["PATCH, no body", req({ method: "PATCH" }), "PATCH / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"],
    [
      "Uint8Array body",
      req({ method: "POST", body: new Uint8Array(3) }),
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n",
    ],
    [
      "stream of known length",
      req({ method: "PUT", body: stream(), bodyLength: 10 }),
      "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n",
    ],
    [
      "stream of unknown length",
      req({ method: "POST", body: stream() }),
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ["no headers at all", req({ fields: [] }), "GET / HTTP/1.1\r\n\r\n"],
    [
      "names and values verbatim",
      req({
        target: "/a;b?c=d&e",
        fields: ["x-Mixed-CASE", "  v  ", "X-Dup", "1", "X-Dup", "2"],
      }),
      "GET /a;b?c=d&e HTTP/1.1\r\nx-Mixed-CASE:   v  \r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n",
    ],
  ])("%s", (_name, request, expected) => {
    expect(serializeRequestHead(request)).toBe(expected);
  });

  test.each([
    ["CRLF in a value", req({ fields: ["A", "1\r\nB: 2"] })],
    ["LF in a value", req({ fields: ["A", "1\nB: 2"] })],
    ["CR in a value", req({ fields: ["A", "1\r"] })],
    ["CRLF in a name", req({ fields: ["A\r\nB", "1"] })],
    ["CRLF in the target", req({ target: "/\r\nGET /evil" })],
    ["space in the target", req({ target: "/a b" })],
    ["space in the method", req({ method: "G ET" })],
    [
      "bodyLength that does not match a Uint8Array",
      req({ method: "POST", body: new Uint8Array(3), bodyLength: 4 }),
    ],
  ])("refuses %s", (_name, request) => {
    expect(() => serializeRequestHead(request)).toThrow(ProxyError);
  });
});

describe("requestAllowsReuse", () => {
  test.each([
    [[], true],
    [[["Connection", "keep-alive"]], true],
    [[["Connection", "closet"]], true],
    [[["connection", "close"]], false],
    [[["Connection", "Upgrade, Close"]], false],
  ] as [[string, string][], boolean][])("%j → %p", (headers, reuse) => {
    expect(requestAllowsReuse(req({ fields: headers.flat() }))).toBe(reuse);
  });
});

describe("frameChunk", () => {
  test.each([
    ["abc", "3\r\nabc\r\n"],
    ["x".repeat(255), `ff\r\n${"x".repeat(255)}\r\n`],
    ["x".repeat(4096), `1000\r\n${"x".repeat(4096)}\r\n`],
  ])("%#", (data, framed) => {
    expect(Buffer.from(frameChunk(Buffer.from(data))).toString()).toBe(framed);
  });
});
