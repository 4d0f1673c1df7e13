/**
 * Every persistence rule over HTTP/2, as over HTTP/1.1: node:http2 clients
 * against an https listener (h2 by ALPN) and an http listener (h2c by prior
 * knowledge), each session returning to the backend that first served it;
 * and a session whose backend stops moves once and stays.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { ConfigInput } from "../../src/config/schema.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { type H2Client, type H2Response, h2Client } from "../support/h2.ts";
import { REPO, type Running, startInProcess } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 9).toString("base64");
const TLS = { certificates: [{ cert: join(REPO, "certs/dev.pem"), key: join(REPO, "certs/dev-key.pem") }] };
const NAMES = ["b1", "b2", "b3"];

/**
 * An application that issues its own session ids, each naming the backend that issued it:
 * PHPSESSID and JSESSIONID cookies and an Mcp-Session-Id header when the request has none,
 * and on /login a `sid` for the URL, by Set-Cookie or (with ?via=location) by a redirect.
 */
function app(name: string): TestBackend {
  return backend(name, (req) => {
    const url = new URL(req.url);
    const cookie = req.headers.get("cookie") ?? "";
    const headers = new Headers({ "x-backend": name, "x-seen-cookie": cookie });
    const issue = () => `${name}-${crypto.randomUUID()}`;
    if (!cookie.includes("PHPSESSID=")) headers.append("set-cookie", `PHPSESSID=${issue()}; Path=/`);
    if (!cookie.includes("JSESSIONID=")) headers.append("set-cookie", `JSESSIONID=${issue()}; Path=/`);
    if (!req.headers.has("mcp-session-id")) headers.set("mcp-session-id", issue());
    if (url.pathname.endsWith("/login")) {
      if (url.searchParams.get("via") === "location") {
        headers.set("location", `/url/home?sid=${issue()}`);
        return new Response(null, { status: 302, headers });
      }
      headers.append("set-cookie", `sid=${issue()}; Path=/`);
    }
    return new Response(name, { headers });
  });
}

/** One client's state: the cookies it was given, the ids it was handed, its own address and key. */
class Session {
  cookies = new Map<string, string>();
  location = "";
  mcp = "";
  readonly id = crypto.randomUUID();
  constructor(readonly ip: string) {}
  cookieHeader() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
  }
  take(r: H2Response) {
    for (const sc of r.headers["set-cookie"] ?? []) {
      const [pair = ""] = sc.split(";");
      const eq = pair.indexOf("=");
      this.cookies.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    if (typeof r.headers.location === "string") this.location = r.headers.location;
    const mcp = r.headers["mcp-session-id"];
    if (typeof mcp === "string" && !this.mcp) this.mcp = mcp;
  }
}

interface Case {
  name: string;
  rule: Record<string, unknown>;
  /** The request a session sends: its first (n = 0) and its returns. */
  request(s: Session, n: number): Record<string, string>;
}

const withCookies = (path: string) => (s: Session) => ({
  ":path": path,
  ...(s.cookies.size ? { cookie: s.cookieHeader() } : {}),
});

const CASES: Case[] = [
  {
    name: "cookie learn: the backend's own PHPSESSID",
    rule: { type: "cookie", mode: "learn", name: "PHPSESSID" },
    request: withCookies("/learn"),
  },
  {
    name: "cookie prefix: JSESSIONID with a route prefix",
    rule: { type: "cookie", mode: "prefix", name: "JSESSIONID" },
    request: withCookies("/prefix"),
  },
  {
    name: "url: ?sid= learned from Set-Cookie",
    rule: { type: "url", param: "sid" },
    request: (s, n) => ({ ":path": n === 0 ? "/url/login" : `/url/cart?sid=${s.cookies.get("sid")}` }),
  },
  {
    name: "url: ?sid= learned from Location",
    rule: { type: "url", param: "sid" },
    request: (s, n) => ({ ":path": n === 0 ? "/url/login?via=location" : s.location }),
  },
  {
    name: "client-ip: the forwarded address",
    rule: { type: "client-ip" },
    request: (s) => ({ ":path": "/ip", "x-forwarded-for": s.ip }),
  },
  {
    name: "header hash: X-Session-Id",
    rule: { type: "header", name: "X-Session-Id" },
    request: (s) => ({ ":path": "/hash", "x-session-id": s.id }),
  },
  {
    name: "header learn: Mcp-Session-Id from the response",
    rule: { type: "header", name: "Mcp-Session-Id", mode: "learn" },
    request: (s) => ({ ":path": "/mcp", ...(s.mcp ? { "mcp-session-id": s.mcp } : {}) }),
  },
];
/** Each case's path prefix, which routes it to a pool of its own. */
const prefixOf = (c: Case) => (c.request(new Session("198.51.100.1"), 0)[":path"] as string).split(/[/?]/)[1];

const SESSIONS = 8;
const RETURNS = 4;

describe("persistence over HTTP/2", () => {
  let backends: TestBackend[];
  let failoverBackends: TestBackend[];
  let proxy: Running;

  beforeAll(() => {
    backends = NAMES.map(app);
    failoverBackends = NAMES.map(app);
    const pool = (bs: TestBackend[], rule: Record<string, unknown>) => ({
      backends: bs.map((b, i) => ({ id: NAMES[i], url: b.url })),
      persistence: [rule],
    });
    const pools: Record<string, unknown> = {
      failover: pool(failoverBackends, { type: "cookie", mode: "insert", name: "TETHER" }),
    };
    for (const c of CASES) pools[prefixOf(c) as string] = pool(backends, c.rule);
    const routes = Object.keys(pools).map((p) => ({ pathPrefix: `/${p}`, pool: p }));
    proxy = startInProcess({
      listeners: [
        {
          name: "h2",
          protocol: "https",
          address: "127.0.0.1:0",
          pool: "failover",
          routes,
          tls: TLS,
          protocols: ["http/1.1", "h2"],
        },
        {
          name: "h2c",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "failover",
          routes,
          protocols: ["http/1.1", "h2c"],
        },
      ],
      pools,
      trustedProxies: ["127.0.0.1/32"],
      secrets: { cookieKeys: [KEY] },
    } as ConfigInput);
  });
  afterAll(async () => {
    await proxy.stop();
    for (const b of [...backends, ...failoverBackends]) b.stop();
  });

  for (const listener of ["h2", "h2c"]) {
    for (const c of CASES) {
      test(`${listener}, ${c.name}: each session returns to its first backend`, async () => {
        const firsts = new Set<string>();
        for (let i = 0; i < SESSIONS; i++) {
          const session = new Session(`198.51.100.${10 + i}`);
          const client = h2Client(proxy.url(listener));
          try {
            const served: string[] = [];
            for (let n = 0; n <= RETURNS; n++) {
              const r = await client.request(c.request(session, n));
              expect(r.status).toBeLessThan(400);
              session.take(r);
              served.push(String(r.headers["x-backend"]));
            }
            const first = served[0] as string;
            firsts.add(first);
            expect(NAMES).toContain(first);
            expect(served).toEqual(Array(RETURNS + 1).fill(first));
          } finally {
            client.close();
          }
        }
        // Sessions spread: staying put was the rule's doing, not a pool that only ever answers from one.
        expect(firsts.size).toBeGreaterThan(1);
      });
    }

    test(`${listener}, cookie prefix: the client sees the route prefix, the backend its own value`, async () => {
      const client = h2Client(proxy.url(listener));
      try {
        const first = await client.request({ ":path": "/prefix" });
        const sc = (first.headers["set-cookie"] ?? []).find((c) => c.startsWith("JSESSIONID=")) ?? "";
        const value = sc.split(";")[0]?.slice("JSESSIONID=".length) ?? "";
        expect(value).toMatch(/^[A-Za-z0-9_-]{16}~b\d-/);
        const again = await client.request({ ":path": "/prefix", cookie: `JSESSIONID=${value}` });
        expect(again.headers["x-seen-cookie"]).toBe(`JSESSIONID=${value.split("~")[1]}`);
      } finally {
        client.close();
      }
    });
  }

  test("h2, failover: the pinned backend stops, the session moves once and stays", async () => {
    const session = new Session("198.51.100.200");
    const client: H2Client = h2Client(proxy.url("h2"));
    const served = async () => {
      const r = await client.request(withCookies("/failover")(session));
      session.take(r);
      return String(r.headers["x-backend"]);
    };
    try {
      const home = await served();
      const before = session.cookies.get("TETHER");
      expect(before).toBeDefined();
      failoverBackends[NAMES.indexOf(home)]?.stop();
      const moved = await served();
      expect(NAMES).toContain(moved);
      expect(moved).not.toBe(home);
      // A new cookie names the new backend.
      expect(session.cookies.get("TETHER")).not.toBe(before);
      for (let i = 0; i < 5; i++) expect(await served()).toBe(moved);
      const repins = proxy.audit.filter((e) => e.event === "session.repinned");
      expect(repins).toHaveLength(1);
      expect(repins[0]).toMatchObject({ from: home, to: moved, pool: "failover" });
    } finally {
      client.close();
    }
  });
});
