import { describe, expect, test } from "bun:test";
import { ProxyError } from "../../src/proxy/errors.ts";
import type { ResponseHead } from "../../src/proxy/upstream/parser.ts";
import {
  acceptFor,
  checkSwitch,
  handshakeHeaders,
  hostFor,
  newKey,
  offeredProtocols,
} from "../../src/proxy/upstream/ws-handshake.ts";
import { target } from "./helpers.ts";

/** RFC 6455 1.3's example key and its accept value. */
const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

function head(headers: [string, string][]): ResponseHead {
  return {
    minor: 1,
    status: 101,
    statusText: "Switching Protocols",
    headers,
    contentLength: null,
    chunked: false,
    close: false,
  };
}

const GOOD: [string, string][] = [
  ["Upgrade", "websocket"],
  ["Connection", "Upgrade"],
  ["Sec-WebSocket-Accept", ACCEPT],
];

describe("keys", () => {
  test("the accept value matches RFC 6455's example", () => {
    expect(acceptFor(KEY)).toBe(ACCEPT);
  });

  test("a new key is 16 random bytes in base64, different each time", () => {
    const a = newKey();
    expect(Buffer.from(a, "base64")).toHaveLength(16);
    expect(newKey()).not.toBe(a);
  });
});

describe("handshakeHeaders", () => {
  test("adds Host from the target and the handshake fields after the caller's", () => {
    expect(handshakeHeaders(target(9001), [["X-Forwarded-For", "10.0.0.1"]], KEY)).toEqual([
      ["Host", "127.0.0.1:9001"],
      ["X-Forwarded-For", "10.0.0.1"],
      ["Upgrade", "websocket"],
      ["Connection", "Upgrade"],
      ["Sec-WebSocket-Version", "13"],
      ["Sec-WebSocket-Key", KEY],
    ]);
  });

  test("keeps the caller's Host and subprotocol offer, drops its handshake fields and extensions", () => {
    const out = handshakeHeaders(
      target(9001),
      [
        ["host", "app.example"],
        ["Sec-WebSocket-Protocol", "chat, superchat"],
        ["Sec-WebSocket-Extensions", "permessage-deflate"],
        ["sec-websocket-key", "someone-elses"],
        ["Connection", "keep-alive"],
        ["Upgrade", "h2c"],
        ["Content-Length", "0"],
      ],
      KEY,
    );
    expect(out.slice(0, 2)).toEqual([
      ["host", "app.example"],
      ["Sec-WebSocket-Protocol", "chat, superchat"],
    ]);
    expect(out.map(([name]) => name.toLowerCase()).sort()).toEqual(
      [
        "connection",
        "host",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "upgrade",
      ].sort(),
    );
  });

  test.each([
    { what: "an IPv6 address in brackets", t: { key: "k", hostname: "::1", port: 9001 }, host: "[::1]:9001" },
    { what: "no port 80 for ws", t: { key: "k", hostname: "app", port: 80 }, host: "app" },
    {
      what: "no port 443 for wss",
      t: { key: "k", hostname: "app", port: 443, tls: { verify: true } },
      host: "app",
    },
    {
      what: "port 80 kept for wss",
      t: { key: "k", hostname: "app", port: 80, tls: { verify: true } },
      host: "app:80",
    },
  ])("Host: $what", ({ t, host }) => {
    expect(hostFor(t)).toBe(host);
  });

  test("offered subprotocols are read from every Sec-WebSocket-Protocol field", () => {
    expect(
      offeredProtocols([
        ["Sec-WebSocket-Protocol", "chat, superchat"],
        ["x", "y"],
        ["sec-websocket-protocol", " v2 ,,"],
      ]),
    ).toEqual(["chat", "superchat", "v2"]);
  });
});

describe("checkSwitch", () => {
  test("accepts a correct 101 and returns no subprotocol", () => {
    expect(checkSwitch(head(GOOD), KEY, [])).toBeNull();
  });

  test("accepts case and list variations: Connection: keep-alive, Upgrade; Upgrade: WebSocket", () => {
    const headers: [string, string][] = [
      ["upgrade", "WebSocket"],
      ["connection", "keep-alive, Upgrade"],
      ["sec-websocket-accept", ACCEPT],
    ];
    expect(checkSwitch(head(headers), KEY, [])).toBeNull();
  });

  test("returns the subprotocol the backend chose from the offer", () => {
    expect(
      checkSwitch(head([...GOOD, ["Sec-WebSocket-Protocol", "superchat"]]), KEY, ["chat", "superchat"]),
    ).toBe("superchat");
  });

  test.each([
    { what: "no Upgrade", headers: GOOD.filter(([n]) => n !== "Upgrade"), detail: "without Upgrade" },
    { what: "Upgrade: h2c", headers: [["Upgrade", "h2c"], ...GOOD.slice(1)], detail: "without Upgrade" },
    {
      what: "no Connection",
      headers: GOOD.filter(([n]) => n !== "Connection"),
      detail: "without Connection",
    },
    { what: "no accept", headers: GOOD.slice(0, 2), detail: "without Sec-WebSocket-Accept" },
    {
      what: "a wrong accept",
      headers: [...GOOD.slice(0, 2), ["Sec-WebSocket-Accept", acceptFor("other")]],
      detail: "does not match",
    },
    { what: "two accepts", headers: [...GOOD, ["Sec-WebSocket-Accept", ACCEPT]], detail: "more than one" },
    {
      what: "an extension",
      headers: [...GOOD, ["Sec-WebSocket-Extensions", "permessage-deflate"]],
      detail: "extension",
    },
    {
      what: "a subprotocol not offered",
      headers: [...GOOD, ["Sec-WebSocket-Protocol", "chat"]],
      detail: "not offered",
    },
  ] as { what: string; headers: [string, string][]; detail: string }[])(
    "refuses $what",
    ({ headers, detail }) => {
      let error: unknown;
      try {
        checkSwitch(head(headers), KEY, []);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(ProxyError);
      expect((error as ProxyError).code).toBe("BAD_RESPONSE");
      expect((error as ProxyError).detail).toContain(detail);
    },
  );
});
