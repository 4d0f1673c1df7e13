/**
 * The HTTP/1.1 front end's request head parser, bytes in and values out:
 * what it takes, how it merges repeated fields (as Bun's Headers.toJSON
 * does, so both front ends feed the forwarder alike), and the status each
 * refusal carries.
 */
import { describe, expect, test } from "bun:test";
import { parseRequestHead, RequestHeadError, validAuthority } from "../../src/server/h1/request-head.ts";

function parse(text: string) {
  const buf = Buffer.from(text, "latin1");
  return parseRequestHead(buf, buf.length);
}

function refusal(text: string): number {
  try {
    parse(text);
  } catch (e) {
    if (e instanceof RequestHeadError) return e.status;
    throw e;
  }
  throw new Error("parsed");
}

describe("request heads the front end takes", () => {
  test("a GET: method, target, version and lowercase field names", () => {
    const head = parse("GET /a/b?q=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t\r\n\r\n");
    expect(head.method).toBe("GET");
    expect(head.target).toBe("/a/b?q=1");
    expect(head.minor).toBe(1);
    expect(head.fields).toEqual({ host: "shop.example", "user-agent": "t" });
    expect(head.contentLength).toBeNull();
    expect(head.chunked).toBe(false);
    expect(head.close).toBe(false);
  });

  test("repeated fields merge as Headers.toJSON merges them: Cookie with '; ', Set-Cookie as a list", () => {
    const head = parse(
      "GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\nCookie: b=2\r\nX-A: 1\r\nx-a: 2\r\nSet-Cookie: s=1\r\nSet-Cookie: t=2\r\n\r\n",
    );
    expect(head.fields.cookie).toBe("a=1; b=2");
    expect(head.fields["x-a"]).toBe("1, 2");
    expect(head.fields["set-cookie"]).toEqual(["s=1", "t=2"]);
    // The head is its own field lookup, case-insensitive as Headers.get is.
    expect(head.headers.get("X-A")).toBe("1, 2");
    expect(head.headers.get("missing")).toBeNull();
  });

  test("names are lowercased whatever their case; an underscore is never read as a dash", () => {
    const head = parse(
      "GET / HTTP/1.1\r\nhOsT: x\r\nCONTENT_LENGTH: 9\r\nX-Forwarded-FOR: 1.2.3.4\r\nX-Custom-Name: v\r\n\r\n",
    );
    expect(Object.keys(head.fields)).toEqual(["host", "content_length", "x-forwarded-for", "x-custom-name"]);
    expect(head.contentLength).toBeNull();
  });

  test("surrounding whitespace is trimmed from values, obs-text kept", () => {
    const head = parse("GET / HTTP/1.1\r\nHost: x\r\nX-A: \t v\xe9 \t\r\n\r\n");
    expect(head.fields["x-a"]).toBe("v\xe9");
  });

  test("framing: Content-Length, chunked (any case), Expect: 100-continue with a body only", () => {
    expect(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\n").contentLength).toBe(5);
    expect(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n").contentLength).toBe(5);
    const chunked = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
    expect(chunked.chunked).toBe(true);
    expect(chunked.contentLength).toBeNull();
    const expecting = "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n";
    expect(parse(`${expecting}Content-Length: 5\r\n\r\n`).expectContinue).toBe(true);
    expect(parse(`${expecting}Content-Length: 0\r\n\r\n`).expectContinue).toBe(false);
  });

  test("connection reuse: HTTP/1.1 keeps it unless close; HTTP/1.0 closes unless keep-alive", () => {
    expect(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").close).toBe(true);
    expect(parse("GET / HTTP/1.0\r\n\r\n").close).toBe(true);
    expect(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").close).toBe(false);
  });

  test("an absolute-form target loses its authority; HTTP/1.0 needs no Host", () => {
    expect(parse("GET http://other.example/p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n").target).toBe("/p?q=1");
    expect(parse("GET http://other.example HTTP/1.1\r\nHost: x\r\n\r\n").target).toBe("/");
    expect(parse("GET http://other.example?q HTTP/1.1\r\nHost: x\r\n\r\n").target).toBe("/?q");
    expect(parse("GET /c HTTP/1.0\r\n\r\n").target).toBe("/c");
  });

  test("CONNECT keeps its authority-form target (the forwarder answers it with 501)", () => {
    const head = parse("CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n");
    expect(head.target).toBe("other.example:443");
  });
});

describe("request heads the front end refuses, and with what", () => {
  const cases: [string, string, number][] = [
    ["no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400],
    ["HTTP/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505],
    ["HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505],
    ["a space inside the target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 505],
    ["two spaces after the method", "GET  /c HTTP/1.1\r\nHost: x\r\n\r\n", 400],
    ["a control character in the method", "G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400],
    ["asterisk-form", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400],
    ["authority-form without CONNECT", "GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400],
    ["obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", 400],
    ["a space before the colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", 400],
    ["a line without a colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", 400],
    ["NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400],
    ["a bare CR in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400],
    ["a bare LF between fields", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\nX-B: 2\r\n\r\n", 400],
    [
      "conflicting Content-Length",
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
      400,
    ],
    ["Content-Length: +5", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400],
    [
      "Content-Length beyond 2^53",
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
      400,
    ],
    [
      "CL and TE",
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      400,
    ],
    ["TE: chunked twice", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400],
    ["TE: gzip, chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400],
    ["TE: identity", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 400],
    ["TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400],
  ];
  for (const [name, text, status] of cases)
    test(`${name}: ${status}`, () => expect(refusal(text)).toBe(status));
});

describe("Host values", () => {
  test("an authority: name, IPv4, [IPv6], each with an optional port", () => {
    for (const h of ["shop.example", "shop.example:8080", "127.0.0.1:80", "[::1]:443", "[::1]", "a-b_c~d"])
      expect(validAuthority(h)).toBe(true);
  });
  test("not an authority: a space, a slash, an @, an unclosed bracket, a port with letters", () => {
    for (const h of ["a b", "a/b", "user@host", "[::1", "host:8o"]) expect(validAuthority(h)).toBe(false);
  });
});
