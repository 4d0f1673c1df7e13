/**
 * Sticky traffic splits end to end, with two worker threads, real backends
 * and a second instance with the same keys: new sessions split by weight, a
 * SIGHUP that changes the weights moves no returning session, weight 0 keeps
 * its sessions and takes no new ones, and client-address sessions are split
 * the same way by every instance. A WebSocket upgrade the split places is
 * audited as an HTTP request is.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { backend, rawRequest, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 13).toString("base64");
const N = 1000;

/**
 * Bounds for a Binomial(n, p) count that a correct split misses with
 * probability far below 1e-6: the mean +- 5.5 standard deviations.
 */
function binomialBounds(n: number, p: number): [number, number] {
  const sd = Math.sqrt(n * p * (1 - p));
  return [Math.floor(n * p - 5.5 * sd), Math.ceil(n * p + 5.5 * sd)];
}

describe("traffic splits (workers: 2, two instances)", () => {
  let backends: TestBackend[];
  let a: Child;
  let b: Child;
  const ports = { a: { web: 0, ip: 0 }, b: { web: 0, ip: 0 } };
  const dir = tempDir();
  let file = "";
  const write = (v1: number, v2: number) =>
    writeConfig(dir, {
      listeners: [
        {
          name: "web",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "v1",
          routes: [
            {
              pathPrefix: "/",
              split: [
                { pool: "v1", weight: v1 },
                { pool: "v2", weight: v2 },
              ],
            },
          ],
        },
        {
          name: "ip",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "i1",
          routes: [
            {
              pathPrefix: "/",
              split: [
                { pool: "i1", weight: v1 },
                { pool: "i2", weight: v2 },
              ],
            },
          ],
        },
      ],
      pools: {
        v1: {
          backends: [0, 1].map((i) => ({ id: `b${i + 1}`, url: backends[i]?.url })),
          persistence: [{ type: "cookie", mode: "insert" }],
        },
        v2: {
          backends: [{ id: "b3", url: backends[2]?.url }],
          persistence: [{ type: "cookie", mode: "insert" }],
        },
        i1: {
          backends: [0, 1].map((i) => ({ id: `b${i + 1}`, url: backends[i]?.url })),
          persistence: [{ type: "client-ip" }],
        },
        i2: { backends: [{ id: "b3", url: backends[2]?.url }], persistence: [{ type: "client-ip" }] },
      },
      trustedProxies: ["127.0.0.1"],
      secrets: { cookieKeys: [KEY] },
      workers: 2,
      snapshot: false,
      audit: "stdout",
    });

  const start = async (which: "a" | "b") => {
    const child = spawnCli(["--config", file]);
    ports[which].web = await workersListening(child, 2, "web");
    ports[which].ip = await workersListening(child, 2, "ip");
    return child;
  };

  beforeAll(async () => {
    backends = ["b1", "b2", "b3"].map((n) => backend(n));
    file = write(90, 10);
    a = await start("a");
    b = await start("b");
  });
  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    for (const x of backends ?? []) x.stop();
  });

  /** A browser-like client: a cookie jar and the backend it last reached. */
  interface Client {
    jar: Map<string, string>;
    backendId: string | null;
  }
  const fresh = (n: number): Client[] =>
    Array.from({ length: n }, () => ({ jar: new Map(), backendId: null }));

  /** One request on its own connection (so either worker may take it); keeps cookies set. */
  const visit = async (port: number, c: Client, extra = ""): Promise<string | null> => {
    const cookie = [...c.jar].map(([k, v]) => `${k}=${v}`).join("; ");
    const raw = await rawRequest(
      port,
      `GET / HTTP/1.1\r\nHost: x\r\n${cookie ? `Cookie: ${cookie}\r\n` : ""}${extra}Connection: close\r\n\r\n`,
    );
    for (const m of raw.matchAll(/set-cookie: ([^=]+)=([^;\r\n]+)/gi))
      c.jar.set(m[1] as string, m[2] as string);
    c.backendId = /x-backend: (b\d)/i.exec(raw)?.[1] ?? null;
    return c.backendId;
  };
  /** Every client visits once, 50 at a time. */
  const visitAll = async (port: number, clients: Client[]): Promise<(string | null)[]> => {
    const out: (string | null)[] = [];
    for (let i = 0; i < clients.length; i += 50)
      out.push(...(await Promise.all(clients.slice(i, i + 50).map((c) => visit(port, c)))));
    return out;
  };
  const inV2 = (backendsSeen: (string | null)[]) => backendsSeen.filter((x) => x === "b3").length;
  const reload = async (v1: number, v2: number) => {
    write(v1, v2);
    const seen = { a: a.lines.length, b: b.lines.length };
    for (const c of [a, b]) c.proc.kill("SIGHUP");
    for (const [c, from] of [
      [a, seen.a],
      [b, seen.b],
    ] as const)
      await c.waitFor((l) => l.msg === "config reloaded" && c.lines.indexOf(l) >= from);
  };

  const clients = fresh(N);
  let first: (string | null)[] = [];

  test("1000 new sessions split about 90/10, each given the split's cookie and kept by either instance", async () => {
    first = await visitAll(ports.a.web, clients);
    expect(first.every((x) => x !== null)).toBe(true);
    const [lo, hi] = binomialBounds(N, 0.1);
    expect(inV2(first)).toBeGreaterThanOrEqual(lo);
    expect(inV2(first)).toBeLessThanOrEqual(hi);
    expect(clients.every((c) => c.jar.has("TETHER_SPLIT") && c.jar.has("TETHER"))).toBe(true);
    // The other instance, with the same keys, sends every returning session to the same backend.
    expect(await visitAll(ports.b.web, clients)).toEqual(first);
    // A new session's pool is audited once, with how it was chosen.
    const split = await until(() => a.lines.filter((l) => l.event === "session.split"), N);
    expect(split.filter((l) => l.pool === "v2").length).toBe(inV2(first));
  });

  test("weights changed by SIGHUP move no returning session; new ones follow the new weights", async () => {
    await reload(50, 50);
    expect(await visitAll(ports.a.web, clients)).toEqual(first);
    expect(await visitAll(ports.b.web, clients)).toEqual(first);
    const newcomers = await visitAll(ports.b.web, fresh(400));
    const [lo, hi] = binomialBounds(400, 0.5);
    expect(inV2(newcomers)).toBeGreaterThanOrEqual(lo);
    expect(inV2(newcomers)).toBeLessThanOrEqual(hi);
  });

  test("weight 0 keeps its sessions and takes no new ones", async () => {
    await reload(100, 0);
    expect(await visitAll(ports.a.web, clients)).toEqual(first);
    expect(inV2(await visitAll(ports.a.web, fresh(200)))).toBe(0);
  });

  test("a bad or foreign split cookie is ignored: the request is placed afresh", async () => {
    for (const value of ["x", "A".repeat(87), clients[0]?.jar.get("TETHER") ?? ""]) {
      const c: Client = { jar: new Map([["TETHER_SPLIT", value]]), backendId: null };
      expect(["b1", "b2"]).toContain((await visit(ports.a.web, c)) as string);
      expect(c.jar.get("TETHER_SPLIT")).not.toBe(value);
    }
  });

  test("client-address sessions are split by a weighted hash: every instance agrees, with no cookie", async () => {
    await reload(70, 30);
    const addresses = Array.from({ length: 300 }, (_, i) => `198.51.${i >> 8}.${i & 255}`);
    const ask = (port: number) =>
      Promise.all(
        addresses.map((ip) => visit(port, { jar: new Map(), backendId: null }, `X-Forwarded-For: ${ip}\r\n`)),
      );
    const onA = await ask(ports.a.ip);
    expect(await ask(ports.b.ip)).toEqual(onA);
    expect(await ask(ports.a.ip)).toEqual(onA);
    const [lo, hi] = binomialBounds(addresses.length, 0.3);
    expect(inV2(onA)).toBeGreaterThanOrEqual(lo);
    expect(inV2(onA)).toBeLessThanOrEqual(hi);
  });

  /** Polls `read` until it returns `count` items (audit lines reach stdout from the primary). */
  async function until<T>(read: () => T[], count: number): Promise<T[]> {
    const end = Date.now() + 5_000;
    while (read().length < count && Date.now() < end) await Bun.sleep(20);
    await Bun.sleep(50);
    const got = read();
    expect(got.length).toBe(count);
    return got;
  }
});

describe("a traffic split placing WebSocket upgrades (workers: 2)", () => {
  let servers: Server<undefined>[];
  let child: Child;
  let port = 0;
  const dir = tempDir();

  beforeAll(async () => {
    // WebSocket backends that say who they are as the socket opens.
    servers = ["w1", "w2"].map((name) =>
      Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        fetch: (req, srv) =>
          srv.upgrade(req) ? undefined : new Response(name, { headers: { "x-backend": name } }),
        websocket: {
          open(ws) {
            ws.send(name);
          },
          message() {},
        },
      }),
    );
    const file = writeConfig(dir, {
      listeners: [
        {
          name: "ws",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "p1",
          routes: [
            {
              pathPrefix: "/",
              split: [
                { pool: "p1", weight: 50 },
                { pool: "p2", weight: 50 },
              ],
            },
          ],
        },
      ],
      pools: Object.fromEntries(
        servers.map((s, i) => [
          `p${i + 1}`,
          {
            backends: [{ id: `w${i + 1}`, url: `http://127.0.0.1:${s.port}` }],
            persistence: [{ type: "cookie", mode: "insert" }],
          },
        ]),
      ),
      secrets: { cookieKeys: [KEY] },
      workers: 2,
      snapshot: false,
      audit: "stdout",
    });
    child = spawnCli(["--config", file]);
    port = await workersListening(child, 2, "ws");
  });
  afterAll(async () => {
    await child?.stop();
    for (const s of servers ?? []) s.stop(true);
  });

  /** Opens a WebSocket through the split and returns the backend that greeted it. */
  const greeting = (headers: Record<string, string> = {}) =>
    new Promise<string>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/live`, { headers });
      ws.onmessage = (ev) => {
        resolve(String(ev.data));
        ws.close();
      };
      ws.onerror = () => reject(new Error("websocket failed to open"));
    });
  const splitLines = () => child.lines.filter((l) => l.event === "session.split");

  test("a new session's upgrade is audited once with its pool and backend, as an HTTP request is", async () => {
    const reached = await Promise.all(Array.from({ length: 40 }, () => greeting()));
    expect(new Set(reached)).toEqual(new Set(["w1", "w2"]));
    const end = Date.now() + 5_000;
    while (splitLines().length < reached.length && Date.now() < end) await Bun.sleep(20);
    await Bun.sleep(50);
    const lines = splitLines();
    expect(lines).toHaveLength(reached.length);
    for (const l of lines) {
      expect(l.listener).toBe("ws");
      expect(l.backend).toBe(l.pool === "p1" ? "w1" : "w2");
    }
    expect(lines.filter((l) => l.pool === "p2").length).toBe(reached.filter((b) => b === "w2").length);
  });

  test("a returning session's upgrade (the split's cookie) keeps its pool and is not audited again", async () => {
    const seen = splitLines().length;
    const raw = await rawRequest(port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    const home = /x-backend: (w\d)/i.exec(raw)?.[1];
    const cookie = [...raw.matchAll(/set-cookie: ([^;\r\n]+)/gi)].map((m) => m[1]).join("; ");
    expect(cookie).toContain("TETHER_SPLIT=");
    const end = Date.now() + 5_000;
    while (splitLines().length < seen + 1 && Date.now() < end) await Bun.sleep(20);
    const before = splitLines().length;
    expect(before).toBe(seen + 1);
    for (let i = 0; i < 10; i++) expect(await greeting({ cookie })).toBe(home as string);
    await Bun.sleep(100);
    expect(splitLines().length).toBe(before);
  });
});
