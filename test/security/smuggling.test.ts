/**
 * Request smuggling and framing: raw bytes sent to a running tether, and what
 * a strict backend behind it receives. For every input, either tether refuses
 * it and the backend receives nothing for it, or the backend receives exactly
 * the one request the client meant, framed one way only. The matrix is in
 * docs/security.md; keep the two in step.
 *
 * Each case gets its own tether and backend, and all cases run at once in
 * beforeAll (most wait for a quiet period), so the file takes a few seconds.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  ENGINES,
  type Engine,
  engineLabel,
  onEngine,
  simpleConfig,
  startInProcess,
} from "../support/tether.ts";
import { type RawExchange, type RecordingBackend, rawExchange, recordingBackend } from "./support.ts";

const H = "Host: shop.example\r\n";
const SMUGGLED = `GET /smuggled HTTP/1.1\r\n${H}\r\n`;

interface Forwarded {
  line: string;
  framing: string;
  body: string;
}

interface Case {
  name: string;
  bytes: string | string[];
  gapMs?: number;
  finAfter?: boolean;
  /** Refused with this status; the backend receives not one byte. */
  reject?: number;
  /** Forwarded: the backend receives exactly these requests. */
  forward?: Forwarded[];
  /** Anything else: a custom check. */
  check?: (r: Result) => void;
  /**
   * What differs on tether's own front end ("engine": "tether"), which
   * answers pipelined requests in order instead of closing, forwards a GET's
   * body, drops a trailer section, and answers 400 where Bun says 505.
   */
  tether?: Partial<Case>;
  /** The bytes hold a second request the client framed itself: its reaching the backend is no smuggling. */
  pipelined?: boolean;
}

interface Result {
  client: RawExchange;
  backend: RecordingBackend;
}

const post = (headers: string, body: string, line = "POST /c HTTP/1.1") =>
  `${line}\r\n${H}${headers}\r\n${body}`;
const chunked = (headers: string, body: string) => post(`${headers}Transfer-Encoding: chunked\r\n`, body);
const hello = (framing: string, line = "POST /c HTTP/1.1"): Forwarded[] => [{ line, framing, body: "hello" }];
const get = (extra: string, line = "GET /c HTTP/1.1") => `${line}\r\n${H}${extra}\r\n`;

/** Nothing complete reached the backend, and whatever part of the request did was cut by a reset. */
function noCompleteRequest(r: Result) {
  expect(r.backend.requests).toEqual([]);
  for (const c of r.backend.connections) if (c.bytes !== "") expect(c.end).toBe("reset");
}

const cases: Case[] = [
  // Baselines: what a well-formed request looks like at the backend.
  {
    name: "baseline: GET",
    bytes: get(""),
    forward: [{ line: "GET /c HTTP/1.1", framing: "none", body: "" }],
  },
  {
    name: "baseline: POST with Content-Length",
    bytes: post("Content-Length: 5\r\n", "hello"),
    forward: hello("cl:5"),
  },
  {
    name: "baseline: POST chunked",
    bytes: chunked("", "5\r\nhello\r\n0\r\n\r\n"),
    forward: hello("chunked"),
  },

  // Content-Length and Transfer-Encoding together, in either order.
  {
    name: "CL+TE",
    bytes: post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", `0\r\n\r\n${SMUGGLED}`),
    reject: 400,
  },
  {
    name: "TE+CL",
    bytes: post(
      "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
      `5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n`,
    ),
    reject: 400,
  },

  // Content-Length variants.
  {
    name: "duplicate identical Content-Length lines",
    bytes: post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
    // Bun merges them to "5, 5"; tether does not take that as a length and re-frames the body as chunked.
    forward: hello("chunked"),
  },
  {
    name: "Content-Length: 5, 5 (one line)",
    bytes: post("Content-Length: 5, 5\r\n", "hello"),
    reject: 400,
    // A list of identical values is one value (RFC 9110 8.6); re-framed as chunked, as the two-line case.
    tether: { reject: undefined, forward: hello("chunked") },
  },
  {
    name: "conflicting Content-Length",
    bytes: post("Content-Length: 5\r\nContent-Length: 41\r\n", `hello${SMUGGLED}`),
    reject: 400,
  },
  { name: "Content-Length: +5", bytes: post("Content-Length: +5\r\n", "hello"), reject: 400 },
  { name: "Content-Length: 0x5", bytes: post("Content-Length: 0x5\r\n", "hello"), reject: 400 },
  { name: "Content-Length: -1", bytes: post("Content-Length: -1\r\n", "hello"), reject: 400 },
  {
    name: "Content-Length beyond 2^64",
    bytes: post("Content-Length: 99999999999999999999999\r\n", "hello"),
    reject: 400,
  },
  { name: "Content-Length: 005", bytes: post("Content-Length: 005\r\n", "hello"), forward: hello("cl:5") },

  // Transfer-Encoding variants.
  {
    name: "TE: chunked, identity",
    bytes: post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: 'TE: " chunked" (leading space)',
    bytes: post("Transfer-Encoding:  chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    forward: hello("chunked"),
  },
  {
    name: "TE:<tab>chunked",
    bytes: post("Transfer-Encoding:\tchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    forward: hello("chunked"),
  },
  {
    name: "TE:<vertical tab>chunked",
    bytes: post("Transfer-Encoding:\x0bchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: "TE: xchunked",
    bytes: post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: "TE: xchunked with Content-Length",
    bytes: post("Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", "hello"),
    reject: 400,
  },
  {
    name: "TE: chunked, chunked",
    bytes: post("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: "TE: chunked on two lines",
    bytes: post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: "TE: Chunked (capitalised)",
    bytes: post("Transfer-Encoding: Chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    forward: hello("chunked"),
  },
  {
    name: "TE: gzip, chunked",
    bytes: post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: "TE: identity with Content-Length",
    bytes: post("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", "hello"),
    reject: 400,
  },
  {
    name: "Transfer-Encoding with a space before the colon",
    bytes: post("Transfer-Encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: "Transfer_Encoding (underscore) with Content-Length",
    bytes: post("Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", "hello"),
    // A CGI-style backend would read Transfer_Encoding as Transfer-Encoding: tether drops it.
    forward: hello("cl:5"),
  },
  {
    name: "Content_Length (underscore) with Content-Length",
    bytes: post("Content_Length: 100\r\nContent-Length: 5\r\n", "hello"),
    forward: hello("cl:5"),
  },

  // Header syntax.
  { name: "obs-fold (continuation line)", bytes: get("X-A: one\r\n two\r\n"), reject: 400 },
  {
    name: "obs-fold inside Transfer-Encoding",
    bytes: post("Transfer-Encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  {
    name: "bare LF line endings throughout",
    bytes: "GET /c HTTP/1.1\nHost: shop.example\nX-A: 1\n\n",
    reject: 505,
    tether: { reject: 400 },
  },
  { name: "one bare LF between headers", bytes: get("X-A: 1\nX-B: 2\r\n"), reject: 400 },
  { name: "NUL in a header value", bytes: get("X-A: a\x00b\r\n"), reject: 400 },
  { name: "bare CR in a header value", bytes: get("X-A: a\rb\r\n"), reject: 400 },
  { name: "space before a header colon", bytes: get("X-A : 1\r\n"), reject: 400 },
  { name: "header line without a colon", bytes: get("X-A\r\n"), reject: 400 },
  { name: "request head of 20 KB (one header)", bytes: get(`X-Big: ${"b".repeat(20_000)}\r\n`), reject: 431 },
  { name: "request line of 20 KB", bytes: get("", `GET /${"a".repeat(20_000)} HTTP/1.1`), reject: 431 },

  // Request line and Host.
  {
    name: "absolute-form request line",
    bytes: get("", "GET http://other.example/path?q=1 HTTP/1.1"),
    // Routing and the backend both see Host: shop.example; the target's authority is dropped.
    forward: [{ line: "GET /path?q=1 HTTP/1.1", framing: "none", body: "" }],
    check: (r) => expect(r.backend.requests[0]?.headers).toContain("host: shop.example"),
  },
  { name: "asterisk-form (OPTIONS *)", bytes: get("", "OPTIONS * HTTP/1.1"), reject: 400 },
  { name: "CONNECT (authority-form)", bytes: get("", "CONNECT other.example:443 HTTP/1.1"), reject: 501 },
  {
    name: "two Host lines",
    bytes: "GET /c HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    reject: 400,
  },
  { name: "Host with a space", bytes: "GET /c/d HTTP/1.1\r\nHost: a b\r\n\r\n", reject: 400 },
  { name: "Host with a slash", bytes: "GET /c/d HTTP/1.1\r\nHost: a/b\r\n\r\n", reject: 400 },
  { name: "HTTP/1.1 without Host", bytes: "GET /c HTTP/1.1\r\n\r\n", reject: 400 },
  {
    name: "HTTP/1.0 without Host keeps its path",
    bytes: "GET /c/d?q=1 HTTP/1.0\r\n\r\n",
    forward: [{ line: "GET /c/d?q=1 HTTP/1.1", framing: "none", body: "" }],
    // Forwarded as HTTP/1.1, which needs a Host: an empty one, as RFC 9112 3.2 asks.
    check: (r) => expect(r.backend.requests[0]?.headers.filter((h) => /^host:/i.test(h))).toEqual(["host: "]),
  },
  { name: "space inside the target", bytes: get("", "GET /a b HTTP/1.1"), reject: 505 },
  { name: "two spaces after the method", bytes: get("", "GET  /c HTTP/1.1"), reject: 400 },
  { name: "HTTP/1.2", bytes: get("", "GET /c HTTP/1.2"), reject: 505 },
  { name: "HTTP/2.0 in an HTTP/1 request line", bytes: get("", "GET /c HTTP/2.0"), reject: 505 },
  {
    name: "control character in the method",
    bytes: get("", "G\x01T /c HTTP/1.1"),
    reject: 505,
    tether: { reject: 400 },
  },

  // HTTP/1.0.
  {
    name: "HTTP/1.0 with Transfer-Encoding",
    bytes: post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n", "POST /c HTTP/1.0"),
    reject: 400,
  },
  {
    name: "HTTP/1.0 with Transfer-Encoding and Content-Length",
    bytes: post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "hello", "POST /c HTTP/1.0"),
    reject: 400,
  },
  {
    name: "HTTP/1.0 with Content-Length",
    bytes: post("Content-Length: 5\r\n", "hello", "POST /c HTTP/1.0"),
    forward: hello("cl:5"),
  },

  // Bodies and pipelining.
  {
    name: "a request inside a Content-Length body",
    bytes: post(`Content-Length: ${SMUGGLED.length}\r\n`, SMUGGLED),
    forward: [{ line: "POST /c HTTP/1.1", framing: `cl:${SMUGGLED.length}`, body: SMUGGLED }],
  },
  {
    name: "a request inside a chunked body",
    bytes: chunked("", `${SMUGGLED.length.toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`),
    forward: [{ line: "POST /c HTTP/1.1", framing: "chunked", body: SMUGGLED }],
  },
  {
    name: "GET with a Content-Length body holding a request",
    bytes: get(`Content-Length: ${SMUGGLED.length}\r\n`) + SMUGGLED,
    // Bun reads the body (it is not taken as a second request) and drops it: GET bodies never reach the backend.
    forward: [{ line: "GET /c HTTP/1.1", framing: "none", body: "" }],
    // tether's front end passes the body on, framed by its length: still one request.
    tether: { forward: [{ line: "GET /c HTTP/1.1", framing: `cl:${SMUGGLED.length}`, body: SMUGGLED }] },
  },
  {
    name: "GET with a chunked body holding a request",
    bytes: `${get("Transfer-Encoding: chunked\r\n")}${SMUGGLED.length.toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`,
    forward: [{ line: "GET /c HTTP/1.1", framing: "none", body: "" }],
    tether: { forward: [{ line: "GET /c HTTP/1.1", framing: "chunked", body: SMUGGLED }] },
  },
  {
    name: "two pipelined requests in one write",
    bytes: get("") + get("", "GET /second HTTP/1.1"),
    // Bun.serve closes the connection when a request arrives while an async handler is pending
    // (oven-sh/bun#38128): neither is answered. The first may reach the backend exactly as sent
    // (a bodyless request is not cancelled for its client's leaving); the second never does.
    check: (r) => {
      expect(r.client.statuses).toEqual([]);
      expect(r.client.closed).toBe(true);
      expect(r.backend.requests.length).toBeLessThanOrEqual(1);
      for (const q of r.backend.requests) expect(q.line).toBe("GET /c HTTP/1.1");
    },
    // tether's front end answers pipelined requests one after the other, in order.
    tether: {
      check: undefined,
      forward: [
        { line: "GET /c HTTP/1.1", framing: "none", body: "" },
        { line: "GET /second HTTP/1.1", framing: "none", body: "" },
      ],
    },
  },
  {
    name: "body longer than Content-Length, a request in the excess",
    bytes: post("Content-Length: 5\r\n", `hello${SMUGGLED}`),
    check: (r) => {
      expect(r.client.statuses).toEqual([]);
      noCompleteRequest(r);
    },
    // tether's front end reads the excess as the next request, framed by the client itself, and answers both in order.
    tether: {
      check: undefined,
      pipelined: true,
      forward: [...hello("cl:5"), { line: "GET /smuggled HTTP/1.1", framing: "none", body: "" }],
    },
  },
  {
    name: "body longer than Content-Length, garbage in the excess",
    bytes: post("Content-Length: 5\r\n", "helloXXXX"),
    // The excess is the start of a next request that never completes.
    forward: hello("cl:5"),
  },
  {
    name: "Connection: content-length",
    bytes: post("Connection: content-length\r\nContent-Length: 5\r\n", "hello"),
    forward: hello("cl:5"),
  },
  {
    name: "Connection: transfer-encoding",
    bytes: chunked("Connection: transfer-encoding\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    forward: hello("chunked"),
  },
  {
    name: "Expect: 100-continue",
    bytes: post("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello"),
    forward: hello("cl:5"),
    check: (r) => expect(r.client.statuses).toEqual([100, 200]),
  },
  {
    name: "Upgrade: h2c",
    bytes: get(
      "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    ),
    forward: [{ line: "GET /c HTTP/1.1", framing: "none", body: "" }],
    check: (r) => {
      const names = r.backend.requests[0]?.headers.map((h) => h.slice(0, h.indexOf(":")).toLowerCase());
      expect(names).not.toContain("upgrade");
      expect(names).not.toContain("http2-settings");
    },
  },

  // Chunked bodies.
  { name: "chunk size with garbage (5g)", bytes: chunked("", "5g\r\nhello\r\n0\r\n\r\n"), reject: 400 },
  {
    name: "chunk size overflow (17 hex digits)",
    bytes: chunked("", "FFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"),
    reject: 400,
  },
  { name: "chunk size 0x5", bytes: chunked("", "0x5\r\nhello\r\n0\r\n\r\n"), reject: 400 },
  { name: "chunk size with a leading space", bytes: chunked("", " 5\r\nhello\r\n0\r\n\r\n"), reject: 400 },
  { name: "negative chunk size", bytes: chunked("", "-5\r\nhello\r\n0\r\n\r\n"), reject: 400 },
  {
    name: "valid chunk extension",
    bytes: chunked("", "5;name=val\r\nhello\r\n0\r\n\r\n"),
    // Re-chunked by tether: the extension does not reach the backend.
    forward: hello("chunked"),
    check: (r) => expect(r.backend.requests[0]?.rawBody).not.toContain(";"),
  },
  { name: "NUL in a chunk extension", bytes: chunked("", "5;\x00\r\nhello\r\n0\r\n\r\n"), reject: 400 },
  {
    name: "bare LF ending a chunk extension",
    bytes: chunked("", `5;x\n${SMUGGLED}hello\r\n0\r\n\r\n`),
    reject: 400,
  },
  { name: "chunk data longer than its size", bytes: chunked("", "3\r\nhello\r\n0\r\n\r\n"), reject: 400 },
  { name: "bare LF after chunk data", bytes: chunked("", "5\r\nhello\n0\r\n\r\n"), reject: 400 },
  { name: "LF-only chunk lines", bytes: chunked("", "5\nhello\n0\n\n"), reject: 400 },
  {
    name: "trailer section",
    bytes: chunked("", "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"),
    reject: 400,
    // Trailer fields are dropped (RFC 9112 7.1.2 lets a recipient discard them).
    tether: { reject: undefined, forward: hello("chunked") },
  },

  // Errors after part of the body was forwarded: the backend must never see a complete request.
  {
    name: "bad chunk size after a good chunk (paused)",
    bytes: [chunked("", "5\r\nhello\r\n"), "zz\r\nxx\r\n0\r\n\r\n"],
    gapMs: 300,
    check: (r) => {
      expect(r.client.statuses).toEqual([400]);
      noCompleteRequest(r);
    },
  },
  {
    name: "chunk overflow after a good chunk (paused)",
    bytes: [chunked("", "5\r\nhello\r\n"), "FFFFFFFFFFFFFFFFFF\r\nxx\r\n0\r\n\r\n"],
    gapMs: 300,
    check: (r) => {
      expect(r.client.statuses).toEqual([400]);
      noCompleteRequest(r);
    },
  },
  {
    name: "client closes mid chunked body",
    bytes: [chunked("", "5\r\nhello\r\n")],
    gapMs: 300,
    finAfter: true,
    check: noCompleteRequest,
  },
  {
    name: "client closes mid Content-Length body",
    bytes: [post("Content-Length: 100\r\n", "hello")],
    gapMs: 300,
    finAfter: true,
    check: noCompleteRequest,
  },
  {
    name: "body longer than Content-Length, excess after a pause",
    bytes: [post("Content-Length: 5\r\n", "hel"), `lo${SMUGGLED}`],
    gapMs: 300,
    check: (r) => {
      // At most the one POST the client framed; never the request in the excess.
      expect(r.backend.requests.length).toBeLessThanOrEqual(1);
      for (const q of r.backend.requests)
        expect(q).toMatchObject({ line: "POST /c HTTP/1.1", body: "hello" });
    },
    // tether's front end reads the excess as the next request, framed by the client itself, and answers both in order.
    tether: {
      check: undefined,
      pipelined: true,
      forward: [...hello("cl:5"), { line: "GET /smuggled HTTP/1.1", framing: "none", body: "" }],
    },
  },
  {
    name: "trailer section after a pause",
    bytes: [chunked("", "5\r\nhello\r\n"), "0\r\nX-T: 1\r\n\r\n"],
    gapMs: 300,
    // Bun ends the body stream at the last chunk, then refuses the trailer (400). The backend may
    // already hold the complete request: one request, the same body, never a second one.
    check: (r) => {
      expect(r.client.statuses).toEqual([400]);
      expect(r.backend.requests.length).toBeLessThanOrEqual(1);
      for (const q of r.backend.requests) expect(q).toMatchObject({ framing: "chunked", body: "hello" });
    },
    tether: { check: undefined, forward: hello("chunked") },
  },
];

/** A case as it runs on `engine`: tether's own front end takes the case's overrides. */
const onEngineCase = (c: Case, engine: Engine): Case =>
  engine === "tether" && c.tether ? { ...c, ...c.tether } : c;

const results = new Map<string, Result>();
const running: { stop(): Promise<void> }[] = [];
const backends: RecordingBackend[] = [];

beforeAll(async () => {
  await Promise.all(
    ENGINES.flatMap((engine) =>
      cases.map(async (c) => {
        const backend = recordingBackend();
        backends.push(backend);
        const proxy = startInProcess(onEngine(simpleConfig([backend.url]), engine));
        running.push(proxy);
        const client = await rawExchange(proxy.port(), c.bytes, {
          ...(c.gapMs ? { gapMs: c.gapMs } : {}),
          ...(c.finAfter ? { finAfter: true } : {}),
          quietMs: 300,
          maxMs: 4000,
        });
        // Let the backend side settle (a reset after an abort, a late write).
        await Bun.sleep(100);
        results.set(`${engine}:${c.name}`, { client, backend });
      }),
    ),
  );
}, 20_000);

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop()));
  for (const b of backends) b.stop();
});

for (const engine of ENGINES)
  describe(`request smuggling and framing${engineLabel(engine)}`, () => {
    for (const base of cases) {
      const c = onEngineCase(base, engine);
      test(c.name, () => {
        const r = results.get(`${engine}:${c.name}`) as Result;
        // The strict backend could read every framing tether produced.
        expect(r.backend.unreadable).toEqual([]);
        if (c.reject !== undefined) {
          expect(r.client.statuses).toEqual([c.reject]);
          expect(r.client.closed).toBe(true);
          expect(r.backend.requests).toEqual([]);
          for (const conn of r.backend.connections) expect(conn.bytes).toBe("");
        }
        if (c.forward) {
          if (!c.check) expect(r.client.statuses).toEqual(c.forward.map(() => 200));
          expect(r.backend.requests.map(({ line, framing, body }) => ({ line, framing, body }))).toEqual(
            c.forward,
          );
          for (const q of r.backend.requests) {
            const names = q.headers.map((h) => h.slice(0, h.indexOf(":")).toLowerCase());
            // One framing header at most, and no look-alike a lenient backend could take for one.
            expect(names.filter((n) => n === "content-length" || n === "transfer-encoding").length).toBe(
              q.framing === "none" ? 0 : 1,
            );
            expect(names.filter((n) => n.includes("_"))).toEqual([]);
          }
        }
        c.check?.(r);
        // Never a request the client did not frame.
        if (!c.pipelined) expect(r.backend.requests.some((q) => q.line.includes("/smuggled"))).toBe(false);
      });
    }
  });
