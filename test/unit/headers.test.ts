import { describe, expect, test } from "bun:test";
import {
  backendRequestFields,
  clientAddress,
  clientResponseHeaders,
  type ForwardFacts,
} from "../../src/proxy/headers.ts";
import { trustedProxies } from "../../src/proxy/trusted-proxies.ts";

const facts = (over: Partial<ForwardFacts> & { host?: string } = {}) => ({
  peerIp: "203.0.113.7",
  peerTrusted: false,
  proto: "https",
  host: "shop.example",
  ...over,
});

/** The fields for the backend; the request's Host is the facts' unless it sends its own ("" none). */
function backendRequestHeaders(
  h: Headers,
  f: ReturnType<typeof facts>,
  keepUpgrade = false,
): [string, string][] {
  if (!h.has("host") && f.host) h.set("host", f.host);
  const flat = backendRequestFields(h, f, keepUpgrade);
  const pairs: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) pairs.push([flat[i] as string, flat[i + 1] as string]);
  return pairs;
}
const asMap = (list: [string, string][]) => new Map(list);

describe("request headers towards the backend", () => {
  test("hop-by-hop headers and those named in Connection are removed (RFC 9110 §7.6.1)", () => {
    const h = new Headers({
      connection: "keep-alive, X-Secret-Hop",
      "keep-alive": "timeout=5",
      "proxy-connection": "keep-alive",
      te: "trailers",
      trailer: "Expires",
      "transfer-encoding": "chunked",
      upgrade: "h2c",
      "proxy-authorization": "Basic Zm9vOmJhcg==",
      "proxy-authenticate": "Basic",
      "x-secret-hop": "1",
      "content-length": "5",
      "x-kept": "yes",
    });
    const out = asMap(backendRequestHeaders(h, facts()));
    for (const gone of [
      "connection",
      "keep-alive",
      "proxy-connection",
      "te",
      "trailer",
      "transfer-encoding",
      "upgrade",
      "proxy-authorization",
      "proxy-authenticate",
      "x-secret-hop",
      "content-length",
    ]) {
      expect(out.has(gone)).toBe(false);
    }
    expect(out.get("x-kept")).toBe("yes");
  });

  test("Connection tokens never remove Host or the forwarding headers tether sets", () => {
    const h = new Headers({
      host: "shop.example",
      connection: "host, x-forwarded-for, x-forwarded-proto, x-forwarded-host, forwarded, x-hop",
      "x-forwarded-for": "6.6.6.6",
      "x-hop": "1",
    });
    for (const peerTrusted of [false, true]) {
      const out = asMap(backendRequestHeaders(h, facts({ peerTrusted })));
      expect(out.get("host")).toBe("shop.example");
      expect(out.get("x-forwarded-for")).toBe(peerTrusted ? "6.6.6.6, 203.0.113.7" : "203.0.113.7");
      expect(out.get("x-forwarded-proto")).toBe("https");
      expect(out.get("x-forwarded-host")).toBe("shop.example");
      expect(out.get("forwarded")).toBe("for=203.0.113.7;proto=https;host=shop.example");
      expect(out.has("x-hop")).toBe(false);
    }
  });

  test("Host and Accept-Encoding pass through as sent", () => {
    const out = asMap(
      backendRequestHeaders(
        new Headers({ host: "shop.example:8443", "accept-encoding": "gzip, br" }),
        facts(),
      ),
    );
    expect(out.get("host")).toBe("shop.example:8443");
    expect(out.get("accept-encoding")).toBe("gzip, br");
  });

  test("forwarding headers from an untrusted peer are replaced, not trusted", () => {
    const spoofed = new Headers({
      "x-forwarded-for": "1.2.3.4",
      "x-forwarded-proto": "http",
      "x-forwarded-host": "evil.example",
      forwarded: "for=1.2.3.4",
    });
    const out = asMap(backendRequestHeaders(spoofed, facts()));
    expect(out.get("x-forwarded-for")).toBe("203.0.113.7");
    expect(out.get("x-forwarded-proto")).toBe("https");
    expect(out.get("x-forwarded-host")).toBe("shop.example");
    expect(out.get("forwarded")).toBe("for=203.0.113.7;proto=https;host=shop.example");
  });

  test("forwarding headers from a trusted proxy are kept and extended", () => {
    const h = new Headers({
      "x-forwarded-for": "198.51.100.1",
      "x-forwarded-proto": "https",
      forwarded: "for=198.51.100.1",
    });
    const out = asMap(
      backendRequestHeaders(h, facts({ peerIp: "10.0.0.2", peerTrusted: true, proto: "http" })),
    );
    expect(out.get("x-forwarded-for")).toBe("198.51.100.1, 10.0.0.2");
    expect(out.get("x-forwarded-proto")).toBe("https");
    expect(out.get("forwarded")).toBe("for=198.51.100.1, for=10.0.0.2;proto=http;host=shop.example");
  });

  test("IPv6 addresses are bracketed and quoted in Forwarded (RFC 7239 §6)", () => {
    const out = asMap(backendRequestHeaders(new Headers(), facts({ peerIp: "2001:db8::1", host: "" })));
    expect(out.get("forwarded")).toBe('for="[2001:db8::1]";proto=https');
  });

  test("a WebSocket handshake keeps Upgrade", () => {
    const out = asMap(
      backendRequestHeaders(new Headers({ upgrade: "websocket", connection: "Upgrade" }), facts(), true),
    );
    expect(out.get("upgrade")).toBe("websocket");
    expect(out.get("connection")).toBe("upgrade");
  });
});

describe("response headers towards the client", () => {
  test("hop-by-hop and framing headers are removed; Set-Cookie stays multiple", () => {
    const out = new Headers(
      clientResponseHeaders([
        ["Connection", "close, X-Internal"],
        ["X-Internal", "1"],
        ["Keep-Alive", "timeout=5"],
        ["Transfer-Encoding", "chunked"],
        ["Content-Length", "10"],
        ["Set-Cookie", "a=1"],
        ["Set-Cookie", "b=2"],
        ["Content-Encoding", "gzip"],
      ]),
    );
    expect(out.has("connection")).toBe(false);
    expect(out.has("x-internal")).toBe(false);
    expect(out.has("keep-alive")).toBe(false);
    expect(out.has("transfer-encoding")).toBe(false);
    expect(out.has("content-length")).toBe(false);
    expect(out.getSetCookie()).toEqual(["a=1", "b=2"]);
    expect(out.get("content-encoding")).toBe("gzip");
  });
});

describe("client address", () => {
  const trusted = trustedProxies(["10.0.0.0/8", "::1/128"]);
  const rows: { why: string; peer: string; xff: string | null; want: string }[] = [
    { why: "no proxy: the peer is the client", peer: "203.0.113.9", xff: null, want: "203.0.113.9" },
    { why: "untrusted peer: its XFF is ignored", peer: "203.0.113.9", xff: "1.1.1.1", want: "203.0.113.9" },
    { why: "trusted peer: the hop before it", peer: "10.0.0.1", xff: "198.51.100.4", want: "198.51.100.4" },
    {
      why: "a chain of trusted proxies is walked from the right",
      peer: "10.0.0.1",
      xff: "6.6.6.6, 198.51.100.4, 10.1.1.1",
      want: "198.51.100.4",
    },
    { why: "garbage in XFF stops the walk", peer: "10.0.0.1", xff: "not-an-ip", want: "10.0.0.1" },
    {
      why: "IPv4-mapped IPv6 peers match IPv4 ranges",
      peer: "::ffff:10.0.0.1",
      xff: "198.51.100.4",
      want: "198.51.100.4",
    },
  ];
  for (const r of rows) test(r.why, () => expect(clientAddress(r.peer, r.xff, trusted)).toBe(r.want));
});
