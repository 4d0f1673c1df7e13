/**
 * HTTP/2 downgrade safety: an HTTP/2 request becomes exactly one HTTP/1.1
 * request to the backend, or none. Hand-built frames (test/support/h2-frames.ts),
 * since curl, nghttp and node:http2 refuse to send these, against the strict
 * recording backend that keeps every byte it receives. Most refusals are Bun's
 * own, before tether sees the request: each is pinned here so that a Bun
 * upgrade that loosens one fails. The table is in docs/security.md; keep the
 * two in step.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { dataFrame, h2Connect, headersFrame } from "../support/h2-frames.ts";
import { REPO, type Running, startInProcess } from "../support/tether.ts";
import { type RecordingBackend, recordingBackend } from "./support.ts";

const SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

function startProxy(be: RecordingBackend): Running {
  return startInProcess({
    listeners: [
      {
        name: "secure",
        protocol: "https",
        address: "127.0.0.1:0",
        pool: "app",
        tls: { certificates: [{ cert: join(REPO, "certs/dev.pem"), key: join(REPO, "certs/dev-key.pem") }] },
        protocols: ["http/1.1", "h2"],
      },
    ],
    pools: { app: { backends: [{ id: "b", url: be.url }] } },
  });
}

type Fields = [string, string][];

describe("HTTP/2 requests Bun refuses before tether sees them", () => {
  let be: RecordingBackend;
  let proxy: Running;
  let authority = "";
  beforeAll(() => {
    be = recordingBackend();
    proxy = startProxy(be);
    authority = `127.0.0.1:${proxy.port()}`;
  });
  afterAll(async () => {
    await proxy.stop();
    be.stop();
  });

  const get = (path: string, method = "GET"): Fields => [
    [":method", method],
    [":scheme", "https"],
    [":authority", authority],
    [":path", path],
  ];
  // RST_STREAM 1 is PROTOCOL_ERROR (RFC 9113 §7); each row's path is its own, so the backend's log shows which arrived.
  const refused: { name: string; fields: () => Fields; body?: string; bun: string }[] = [
    {
      name: "connection: close",
      fields: () => [...get("/r1"), ["connection", "close"]],
      bun: "RST_STREAM 1",
    },
    { name: "keep-alive", fields: () => [...get("/r2"), ["keep-alive", "5"]], bun: "RST_STREAM 1" },
    {
      name: "proxy-connection",
      fields: () => [...get("/r3"), ["proxy-connection", "keep-alive"]],
      bun: "RST_STREAM 1",
    },
    {
      name: "transfer-encoding: chunked",
      fields: () => [...get("/r4"), ["transfer-encoding", "chunked"]],
      bun: "RST_STREAM 1",
    },
    {
      name: "upgrade: websocket",
      fields: () => [...get("/r5"), ["upgrade", "websocket"]],
      bun: "RST_STREAM 1",
    },
    {
      name: "te: gzip (only trailers is allowed)",
      fields: () => [...get("/r6"), ["te", "gzip"]],
      bun: "RST_STREAM 1",
    },
    { name: "an uppercase field name", fields: () => [...get("/r7"), ["X-Foo", "a"]], bun: "RST_STREAM 1" },
    { name: "CR in a value", fields: () => [...get("/r8"), ["x-foo", "a\rb"]], bun: "RST_STREAM 1" },
    { name: "LF in a value", fields: () => [...get("/r9"), ["x-foo", `a\nb`]], bun: "RST_STREAM 1" },
    { name: "NUL in a value", fields: () => [...get("/r10"), ["x-foo", "a\0b"]], bun: "RST_STREAM 1" },
    { name: "CR in a name", fields: () => [...get("/r11"), ["x-f\roo", "a"]], bun: "RST_STREAM 1" },
    { name: "LF in a name", fields: () => [...get("/r12"), ["x-f\noo", "a"]], bun: "RST_STREAM 1" },
    { name: "NUL in a name", fields: () => [...get("/r13"), ["x-f\0oo", "a"]], bun: "RST_STREAM 1" },
    { name: ":path without a leading slash", fields: () => get("r14"), bun: "RST_STREAM 1" },
    { name: "empty :path", fields: () => get(""), bun: "RST_STREAM 1" },
    { name: "no :path", fields: () => get("/r16").filter(([n]) => n !== ":path"), bun: "RST_STREAM 1" },
    { name: "a space in :path", fields: () => get("/r17 x"), bun: "RST_STREAM 1" },
    {
      name: "a pseudo-header after a regular field",
      fields: () => [
        [":method", "GET"],
        ["x-a", "1"],
        [":scheme", "https"],
        [":authority", authority],
        [":path", "/r18"],
      ],
      bun: "RST_STREAM 1",
    },
    {
      name: "duplicate content-length, equal",
      fields: () => [...get("/r19", "POST"), ["content-length", "5"], ["content-length", "5"]],
      body: "hello",
      bun: "RST_STREAM 1",
    },
    {
      name: "duplicate content-length, different",
      fields: () => [...get("/r20", "POST"), ["content-length", "5"], ["content-length", "6"]],
      body: "hello",
      bun: "RST_STREAM 1",
    },
    {
      name: "host disagreeing with :authority",
      fields: () => [...get("/r21"), ["host", "other.example"]],
      bun: "RST_STREAM 1",
    },
    {
      name: "CONNECT (Bun answers it itself)",
      fields: () => [
        [":method", "CONNECT"],
        [":authority", "other.example:443"],
      ],
      bun: "status 404",
    },
  ];

  for (const c of refused) {
    test(`${c.name}: Bun answers ${c.bun}, the backend receives nothing`, async () => {
      const conn = await h2Connect(proxy.port());
      try {
        const fields = c.fields();
        conn.send(
          headersFrame(1, fields, c.body === undefined),
          ...(c.body === undefined ? [] : [dataFrame(1, c.body)]),
        );
        expect(await conn.outcome(1)).toBe(c.bun);
        // A request that got as far as tether would be on the backend's wire by now.
        await Bun.sleep(100);
        const path = fields.find(([n]) => n === ":path")?.[1] ?? "CONNECT";
        const bytes = be.connections.map((x) => x.bytes).join("");
        expect(path === "" || !bytes.includes(` ${path} `)).toBe(true);
        expect(bytes).not.toContain("CONNECT");
      } finally {
        conn.close();
      }
    });
  }

  const forwarded: { name: string; fields: () => Fields; line: string; header?: () => string }[] = [
    { name: "baseline GET", fields: () => get("/f1"), line: "GET /f1 HTTP/1.1" },
    {
      name: "te: trailers (allowed; not forwarded: TE is hop-by-hop)",
      fields: () => [...get("/f2"), ["te", "trailers"]],
      line: "GET /f2 HTTP/1.1",
    },
    {
      name: "host equal to :authority",
      fields: () => [...get("/f3"), ["host", authority]],
      line: "GET /f3 HTTP/1.1",
      header: () => `host: ${authority}`,
    },
    {
      name: "two cookie fields (joined into one line, RFC 9113 §8.2.3)",
      fields: () => [...get("/f4"), ["cookie", "a=1"], ["cookie", "b=2"]],
      line: "GET /f4 HTTP/1.1",
      header: () => "cookie: a=1; b=2",
    },
  ];
  for (const c of forwarded) {
    test(`${c.name}: exactly one request reaches the backend`, async () => {
      const conn = await h2Connect(proxy.port());
      try {
        conn.send(headersFrame(1, c.fields()));
        expect(await conn.outcome(1)).toBe("status 200");
        const got = be.requests.filter((r) => r.line === c.line);
        expect(got).toHaveLength(1);
        expect(got[0]?.headers.some((h) => /^te:/i.test(h))).toBe(false);
        const header = c.header?.();
        if (header) {
          const name = header.slice(0, header.indexOf(":"));
          expect(got[0]?.headers.filter((h) => h.startsWith(`${name}:`))).toEqual([header]);
        }
      } finally {
        conn.close();
      }
    });
  }
});

describe("H2.CL: a content-length that disagrees with the DATA frames reaches tether", () => {
  const cases: {
    name: string;
    declared: string;
    data: [string, boolean][];
    client: string;
    complete: boolean;
  }[] = [
    {
      name: "longer body in the first DATA frame",
      declared: "5",
      data: [[`hello${SMUGGLED}`, true]],
      client: "RST_STREAM 1",
      complete: false,
    },
    // The backend gets the declared 5 bytes (a complete request), then Bun fails the body on the excess.
    {
      name: "the excess in a later DATA frame",
      declared: "5",
      data: [
        ["hello", false],
        [SMUGGLED, true],
      ],
      client: "status 200",
      complete: true,
    },
    {
      name: "a shorter body",
      declared: "10",
      data: [["hello", true]],
      client: "RST_STREAM 1",
      complete: false,
    },
  ];
  for (const c of cases) {
    test(`${c.name}: the backend never receives more than the declared length, and its connection is not reused`, async () => {
      const be = recordingBackend();
      const proxy = startProxy(be);
      const authority = `127.0.0.1:${proxy.port()}`;
      const conn = await h2Connect(proxy.port());
      try {
        const post: Fields = [
          [":method", "POST"],
          [":scheme", "https"],
          [":authority", authority],
          [":path", "/p"],
          ["content-length", c.declared],
        ];
        conn.send(headersFrame(1, post, false));
        for (const [data, end] of c.data) {
          // Apart, so the backend has the head (and the first part) before the rest arrives.
          await Bun.sleep(150);
          conn.send(dataFrame(1, data, end));
        }
        expect(await conn.outcome(1)).toBe(c.client);
        // The next request (another client connection) must not ride the backend connection the POST used.
        const next = await h2Connect(proxy.port());
        next.send(
          headersFrame(1, [
            [":method", "GET"],
            [":scheme", "https"],
            [":authority", authority],
            [":path", "/next"],
          ]),
        );
        expect(await next.outcome(1)).toBe("status 200");
        next.close();
        const postConn = be.connections.filter((x) => x.bytes.startsWith("POST /p "));
        expect(postConn).toHaveLength(1);
        const bytes = postConn[0]?.bytes ?? "";
        const body = bytes.slice(bytes.indexOf("\r\n\r\n") + 4);
        expect(body.length).toBeLessThanOrEqual(Number(c.declared));
        expect(be.connections.some((x) => x.bytes.includes("/smuggled"))).toBe(false);
        expect(postConn[0]?.end).toBe("reset");
        expect(postConn[0]?.bytes).not.toContain("/next");
        expect(be.requests.map((r) => `${r.line} ${r.body}`)).toEqual(
          c.complete ? ["POST /p HTTP/1.1 hello", "GET /next HTTP/1.1 "] : ["GET /next HTTP/1.1 "],
        );
      } finally {
        conn.close();
        await proxy.stop();
        be.stop();
      }
    });
  }
});
