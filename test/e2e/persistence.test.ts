/**
 * Session persistence through a running tether: real backends, real cookies.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { createAudit } from "../../src/audit.ts";
import type { ConfigInput } from "../../src/config/schema.ts";
import { PersistenceChain } from "../../src/persistence/chain.ts";
import { startTether } from "../../src/server/app.ts";
import { backend, rawBackend, rawRequest, type TestBackend } from "../support/backends.ts";
import { startRedis } from "../support/redis.ts";
import {
  ENGINES,
  type Engine,
  engineLabel,
  memoryLogger,
  onEngine,
  type Running,
  config as resolve,
  startInProcess,
} from "../support/tether.ts";

const KEY = Buffer.alloc(32, 7).toString("base64");

/** Backends that answer with their name and echo the Cookie header they received. */
function trio(): TestBackend[] {
  return ["b1", "b2", "b3"].map((name) =>
    backend(
      name,
      (req) =>
        new Response(name, {
          headers: { "x-backend": name, "x-seen-cookie": req.headers.get("cookie") ?? "" },
        }),
    ),
  );
}

type Started = Running;

function start(
  engine: Engine,
  backends: TestBackend[],
  persistence: unknown[],
  pool: Record<string, unknown> = {},
  extra: Partial<ConfigInput> = {},
): Started {
  return startInProcess(
    onEngine(
      {
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: {
          app: { backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })), persistence, ...pool },
        },
        trustedProxies: ["127.0.0.1/32"],
        secrets: { cookieKeys: [KEY] },
        ...extra,
      } as ConfigInput,
      engine,
    ),
  );
}

/** A tiny cookie jar for one client. */
class Jar {
  cookies = new Map<string, string>();
  header(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
  }
  take(res: Response) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair = ""] = sc.split(";");
      const eq = pair.indexOf("=");
      this.cookies.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
  }
  async get(url: string, headers: Record<string, string> = {}): Promise<Response> {
    const res = await fetch(url, { headers: { ...headers, cookie: this.header() } });
    this.take(res);
    return res;
  }
}

const served = (res: Response) => res.headers.get("x-backend");

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});
const using = (b: TestBackend[], t: Started) => {
  cleanup.push(() => {
    for (const x of b) x.stop();
  });
  cleanup.push(() => t.stop());
  return t;
};

for (const engine of ENGINES)
  describe(`cookie insert${engineLabel(engine)}`, () => {
    const rule = { type: "cookie", mode: "insert", name: "TETHER" };

    test("with a cookie jar, 100 requests stay on one backend", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [rule]));
      const jar = new Jar();
      const seen = new Set<string | null>();
      for (let i = 0; i < 100; i++) seen.add(served(await jar.get(`${t.url()}/`)));
      expect(seen.size).toBe(1);
    });

    test("3,000 fresh clients spread within ±10% over 3 equal backends", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [rule]));
      const counts = new Map<string, number>();
      for (let i = 0; i < 3000; i += 50) {
        const batch = await Promise.all(Array.from({ length: 50 }, () => fetch(`${t.url()}/`)));
        for (const res of batch)
          counts.set(served(res) as string, (counts.get(served(res) as string) ?? 0) + 1);
      }
      for (const n of counts.values()) {
        expect(n).toBeGreaterThan(900);
        expect(n).toBeLessThan(1100);
      }
    });

    test("the cookie is sealed, HttpOnly, SameSite=Lax, removed before the backend, and makes the response private", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [rule]));
      const first = await fetch(`${t.url()}/`);
      const sc = first.headers.getSetCookie()[0] ?? "";
      expect(sc).toMatch(/^TETHER=[A-Za-z0-9_-]{87}; Path=\/; HttpOnly; SameSite=Lax$/);
      // Nothing about the backend shows: not its address, and two sessions on one backend look unrelated.
      for (const x of b) expect(sc).not.toContain(x.url.slice("http://".length));
      const second = (await fetch(`${t.url()}/`)).headers.getSetCookie()[0] ?? "";
      expect(second.slice(0, 40)).not.toBe(sc.slice(0, 40));
      expect(first.headers.get("cache-control")).toBe("private");
      const again = await fetch(`${t.url()}/`, { headers: { cookie: `${sc.split(";")[0]}; app=1` } });
      expect(again.headers.get("x-seen-cookie")).toBe("app=1");
      expect(again.headers.getSetCookie()).toEqual([]);
    });

    test("the new cookie joins the backend's own Set-Cookies; several Cache-Control lines become one private list", async () => {
      // Raw answers: a Bun backend would merge the two Cache-Control lines itself.
      const through = (cacheControl: string) => {
        const b = rawBackend((s) =>
          s.write(`HTTP/1.1 200 OK\r\nSet-Cookie: theirs=1\r\n${cacheControl}Content-Length: 2\r\n\r\nok`),
        );
        const t = startInProcess(
          onEngine(
            {
              listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
              pools: { app: { backends: [{ id: "b1", url: b.url }], persistence: [rule] } },
              secrets: { cookieKeys: [KEY] },
            } as ConfigInput,
            engine,
          ),
        );
        const stop = async () => {
          await t.stop();
          b.stop();
        };
        return { url: t.url(), stop };
      };
      const two = through("Cache-Control: max-age=60\r\nCache-Control: must-revalidate\r\n");
      const noStore = through("Cache-Control: no-store\r\n");
      try {
        const res = await fetch(`${two.url}/`);
        const cookies = res.headers.getSetCookie();
        expect(cookies[0]).toBe("theirs=1");
        expect(cookies[1]?.startsWith("TETHER=")).toBe(true);
        expect(res.headers.get("cache-control")).toBe("private, max-age=60, must-revalidate");
        expect(await res.text()).toBe("ok");
        // Already kept out of shared caches: left as the backend sent it.
        expect((await fetch(`${noStore.url}/`)).headers.get("cache-control")).toBe("no-store");
      } finally {
        await two.stop();
        await noStore.stop();
      }
    });

    test("a no-cache response with the cookie becomes private, without public and s-maxage (RFC 9111 §5.2.2.4)", async () => {
      // A shared cache may store a no-cache response, Set-Cookie and all, and revalidate it for the next user.
      const b = [
        backend(
          "b1",
          () =>
            new Response("b1", { headers: { "cache-control": "public, no-cache, s-maxage=60, max-age=10" } }),
        ),
      ];
      const t = using(b, start(engine, b, [rule]));
      const res = await fetch(`${t.url()}/`);
      expect(res.headers.getSetCookie()[0]?.startsWith("TETHER=")).toBe(true);
      expect(res.headers.get("cache-control")).toBe("private, no-cache, max-age=10");
    });

    test("a tampered cookie is re-placed with a fresh cookie and audited, not followed", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [rule]));
      const jar = new Jar();
      await jar.get(`${t.url()}/`);
      const token = jar.cookies.get("TETHER") as string;
      const flipped = token.slice(0, 40) + (token[40] === "A" ? "B" : "A") + token.slice(41);
      const res = await fetch(`${t.url()}/`, { headers: { cookie: `TETHER=${flipped}` } });
      expect(res.status).toBe(200);
      const fresh = res.headers.getSetCookie()[0] ?? "";
      expect(fresh.startsWith("TETHER=")).toBe(true);
      expect(fresh).not.toContain(flipped);
      const rejected = t.audit.find((e) => e.event === "persistence.rejected");
      expect(rejected).toMatchObject({
        reason: "bad-mac",
        rule: "cookie-insert",
        pool: "app",
        listener: "web",
      });
      expect(JSON.stringify(t.audit)).not.toContain(flipped);
      expect(JSON.stringify(t.audit)).not.toContain(token);
    });

    test("garbage cookies never cause a 4xx or 5xx", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [rule]));
      for (const v of ["", "x", "%%%", "A".repeat(87), "A".repeat(5000), "a=b=c", "TETHER=x; TETHER=y"]) {
        const res = await fetch(`${t.url()}/`, { headers: { cookie: `TETHER=${v}` } });
        expect(res.status).toBe(200);
      }
      const raw = await rawRequest(
        t.port(),
        "GET / HTTP/1.1\r\nHost: x\r\nCookie: TETHER=\u00ff💥\r\nConnection: close\r\n\r\n",
      );
      expect(raw).toMatch(/^HTTP\/1\.1 200/);
    });

    test("killing the pinned backend moves the session once, and it stays moved after the backend returns", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [rule]));
      const jar = new Jar();
      const home = served(await jar.get(`${t.url()}/`)) as string;
      const victim = b[Number(home.slice(1)) - 1] as TestBackend;
      const port = victim.server.port;
      victim.stop();
      const moved = served(await jar.get(`${t.url()}/`));
      expect(moved).not.toBe(home);
      expect(moved).not.toBeNull();
      expect(t.audit.some((e) => e.event === "session.repinned" && e.from === home && e.to === moved)).toBe(
        true,
      );
      for (let i = 0; i < 10; i++) expect(served(await jar.get(`${t.url()}/`))).toBe(moved);
      // The old backend comes back on the same port: the session does not flap back.
      const revived = backend(home, () => new Response(home, { headers: { "x-backend": home } }));
      cleanup.push(() => revived.stop());
      const reborn = Bun.serve({
        hostname: "127.0.0.1",
        port,
        fetch: () => new Response(home, { headers: { "x-backend": home } }),
      });
      cleanup.push(() => reborn.stop(true));
      for (let i = 0; i < 10; i++) expect(served(await jar.get(`${t.url()}/`))).toBe(moved);
    });

    test("a draining backend keeps its sessions and takes no new ones", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [rule]));
      const jars = Array.from({ length: 30 }, () => new Jar());
      const homes = await Promise.all(jars.map(async (j) => served(await j.get(`${t.url()}/`))));
      const drained = homes[0] as string;
      const next = resolve({
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: {
          app: {
            backends: b.map((x, i) => ({
              id: `b${i + 1}`,
              url: x.url,
              state: `b${i + 1}` === drained ? "drain" : "ready",
            })),
            persistence: [rule],
          },
        },
        secrets: { cookieKeys: [KEY] },
      } as ConfigInput);
      const port = t.port();
      await t.tether.reload({ ...next, listeners: next.listeners.map((l) => ({ ...l, port })) });
      // Existing sessions on the draining backend stay.
      for (let i = 0; i < jars.length; i++)
        expect(served(await (jars[i] as Jar).get(`${t.url()}/`))).toBe(homes[i] as string);
      // New sessions never land on it.
      for (let i = 0; i < 60; i++) expect(served(await fetch(`${t.url()}/`))).not.toBe(drained);
    });
  });

for (const engine of ENGINES)
  describe(`url session IDs${engineLabel(engine)}`, () => {
    test("a query sid and a ;jsessionid= both stick", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [{ type: "url", param: "sid", pathParam: "jsessionid" }]));
      for (const sid of ["alpha", "beta", "gamma", "delta"]) {
        const q = new Set<string | null>();
        const p = new Set<string | null>();
        for (let i = 0; i < 10; i++) {
          q.add(served(await fetch(`${t.url()}/cart?x=${i}&sid=${sid}`)));
          p.add(served(await fetch(`${t.url()}/cart;jsessionid=${sid}?x=${i}`)));
        }
        expect(q.size).toBe(1);
        expect(p.size).toBe(1);
      }
    });

    test("with maxEntries 50, sessions issued by Set-Cookie and Location still reach their owners after 500 made-up ids", async () => {
      const names = ["b1", "b2", "b3"];
      // The ring alone, to issue only IDs it would place elsewhere: reaching the owner proves the learned entry.
      const ring = new PersistenceChain(
        names.map((id) => ({ id, weight: 1, state: "ready" as const, inflight: 0 })),
        {
          pool: "app",
          rules: [{ type: "url", param: "sid", expireMs: 60_000, maxEntries: 1 }],
          keys: [Buffer.from(KEY, "base64")],
          hashBalanceFactor: 1.25,
        },
      );
      const byRing = (sid: string) =>
        ring.place({ cookie: null, target: `/?sid=${sid}`, clientIp: "", headers: new Headers(), nowSec: 0 })
          ?.placement.backendId;
      let issued = 0;
      const b = names.map((name) =>
        backend(name, (req) => {
          const url = new URL(req.url);
          const headers = new Headers({ "x-backend": name });
          if (url.pathname !== "/login") return new Response(name, { headers });
          let sid = `${name}-${issued++}`;
          while (byRing(sid) === name) sid = `${name}-${issued++}`;
          if (url.searchParams.get("via") === "location") {
            headers.set("location", `/home?sid=${sid}`);
            return new Response(null, { status: 302, headers });
          }
          headers.append("set-cookie", `sid=${sid}; Path=/`);
          return new Response(name, { headers });
        }),
      );
      const t = using(b, start(engine, b, [{ type: "url", param: "sid", maxEntries: 50 }]));
      const sessions: { sid: string; owner: string }[] = [];
      for (const via of ["cookie", "location", "cookie", "location", "cookie"]) {
        const res = await fetch(`${t.url()}/login?via=${via}`, { redirect: "manual" });
        const from = via === "cookie" ? res.headers.getSetCookie()[0] : res.headers.get("location");
        const sid = /sid=([^;&]+)/.exec(from ?? "")?.[1] as string;
        sessions.push({ sid, owner: served(res) as string });
      }
      const reached = async () =>
        Promise.all(
          sessions.map(async (s) => `${s.sid} → ${served(await fetch(`${t.url()}/cart?sid=${s.sid}`))}`),
        );
      const owners = sessions.map((s) => `${s.sid} → ${s.owner}`);
      expect(await reached()).toEqual(owners);
      for (let i = 0; i < 500; i += 50)
        await Promise.all(
          Array.from({ length: 50 }, () =>
            fetch(`${t.url()}/cart?sid=${crypto.randomUUID()}`).then((r) => r.text()),
          ),
        );
      expect(await reached()).toEqual(owners);
    });
  });

for (const engine of ENGINES)
  describe(`url session IDs with a cluster${engineLabel(engine)}`, () => {
    /** Calls of one Redis command so far, from INFO commandstats. */
    const calls = async (raw: RedisClient, command: string) => {
      const info = String(await raw.send("INFO", ["commandstats"]));
      return Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(info)?.[1] ?? 0);
    };

    test("made-up ids write nothing to Redis, and one repeated is looked up once", async () => {
      const redis = await startRedis();
      const raw = new RedisClient(redis.url, { enableOfflineQueue: false, autoReconnect: false });
      cleanup.push(() => redis.close());
      cleanup.push(() => raw.close());
      await raw.connect();
      const b = ["b1", "b2", "b3"].map((name) =>
        backend(name, (req) => {
          const headers = new Headers({ "x-backend": name });
          if (new URL(req.url).pathname === "/login")
            headers.append("set-cookie", `sid=${name}-issued; Path=/`);
          return new Response(name, { headers });
        }),
      );
      const t = using(
        b,
        start(
          engine,
          b,
          [{ type: "url", param: "sid" }],
          {},
          {
            cluster: { redis: { url: redis.url, lookupTimeoutMs: 500 } },
          },
        ),
      );
      for (let i = 0; i < 100; i += 25)
        await Promise.all(
          Array.from({ length: 25 }, () =>
            fetch(`${t.url()}/cart?sid=${crypto.randomUUID()}`).then((r) => r.text()),
          ),
        );
      const login = await fetch(`${t.url()}/login`);
      let keys: string[] = [];
      for (let i = 0; i < 200 && keys.length === 0; i++) {
        keys = (await raw.send("KEYS", ["tether:t:app:0:url:*"])) as string[];
        if (keys.length === 0) await Bun.sleep(10);
      }
      // Only the ID the backend issued was written.
      expect(keys.length).toBe(1);
      expect(await raw.get(keys[0] as string)).toBe(served(login));

      const gets = await calls(raw, "get");
      for (let i = 0; i < 10; i++) await (await fetch(`${t.url()}/cart?sid=never-issued`)).text();
      expect((await calls(raw, "get")) - gets).toBe(1);
    });
  });

for (const engine of ENGINES)
  describe(`cookie learn and prefix${engineLabel(engine)}`, () => {
    test("learn: a session cookie set by a backend routes its later requests there", async () => {
      const b = ["b1", "b2", "b3"].map((name) =>
        backend(name, (req) => {
          const has = (req.headers.get("cookie") ?? "").includes("PHPSESSID=");
          const headers = new Headers({ "x-backend": name });
          if (!has) headers.append("set-cookie", `PHPSESSID=${name}-${crypto.randomUUID()}; Path=/`);
          return new Response(name, { headers });
        }),
      );
      const t = using(b, start(engine, b, [{ type: "cookie", mode: "learn", name: "PHPSESSID" }]));
      for (let c = 0; c < 5; c++) {
        const jar = new Jar();
        const home = served(await jar.get(`${t.url()}/`));
        for (let i = 0; i < 10; i++) expect(served(await jar.get(`${t.url()}/`))).toBe(home);
      }
    });

    test("prefix: the app's cookie gets an opaque route prefix out, and loses it in", async () => {
      const b = ["b1", "b2", "b3"].map((name) =>
        backend(name, (req) => {
          const cookie = req.headers.get("cookie") ?? "";
          const headers = new Headers({ "x-backend": name, "x-seen-cookie": cookie });
          if (!cookie.includes("JSESSIONID="))
            headers.append("set-cookie", "JSESSIONID=abc123; Path=/; HttpOnly");
          return new Response(name, { headers });
        }),
      );
      const t = using(b, start(engine, b, [{ type: "cookie", mode: "prefix", name: "JSESSIONID" }]));
      const jar = new Jar();
      const first = await jar.get(`${t.url()}/`);
      const value = jar.cookies.get("JSESSIONID") as string;
      expect(value).toMatch(/^[A-Za-z0-9_-]{16}~abc123$/);
      expect(first.headers.getSetCookie()[0]).toContain("; Path=/; HttpOnly");
      const home = served(first);
      for (let i = 0; i < 10; i++) {
        const res = await jar.get(`${t.url()}/`);
        expect(served(res)).toBe(home);
        expect(res.headers.get("x-seen-cookie")).toBe("JSESSIONID=abc123");
      }
    });
  });

for (const engine of ENGINES)
  describe(`client-ip${engineLabel(engine)}`, () => {
    const pairs = Array.from({ length: 20 }, (_, i) => [`198.51.${i}.10`, `198.51.${i}.200`] as const);
    const via = (t: Started, ip: string) =>
      fetch(`${t.url()}/`, { headers: { "x-forwarded-for": ip } }).then(served);

    test("with ipv4Prefix 24, 20 pairs of addresses sharing a /24 each land together", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [{ type: "client-ip", ipv4Prefix: 24 }]));
      for (const [a, c] of pairs) expect(await via(t, a)).toBe(await via(t, c));
    });

    test("with prefix 32 the same pairs do not all land together", async () => {
      const b = trio();
      const t = using(b, start(engine, b, [{ type: "client-ip", ipv4Prefix: 32 }]));
      let together = 0;
      for (const [a, c] of pairs) if ((await via(t, a)) === (await via(t, c))) together++;
      expect(together).toBeLessThan(pairs.length);
    });
  });

for (const engine of ENGINES)
  describe(`maxConn and the queue${engineLabel(engine)}`, () => {
    const limitedPool = (queueTimeoutMs: number) => {
      let inflight = 0;
      let peak = 0;
      const b = backend("slow", async () => {
        inflight++;
        peak = Math.max(peak, inflight);
        await Bun.sleep(250);
        inflight--;
        return new Response("slow", { headers: { "x-backend": "slow" } });
      });
      const audit: Record<string, unknown>[] = [];
      const tether = startTether(
        resolve({
          listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
          pools: { app: { backends: [{ id: "s", url: b.url, maxConn: 1 }], queueTimeoutMs } },
        } as ConfigInput),
        memoryLogger(),
        { audit: createAudit(undefined, (l) => audit.push(JSON.parse(l))) },
      );
      cleanup.push(() => b.stop());
      cleanup.push(() => tether.stop(100));
      const url = `http://127.0.0.1:${[...tether.listeners.values()][0]?.server.port}/`;
      return { url, peak: () => peak };
    };

    test("requests over maxConn wait for a free slot instead of failing", async () => {
      const p = limitedPool(5_000);
      const statuses = await Promise.all(Array.from({ length: 4 }, () => fetch(p.url).then((r) => r.status)));
      expect(statuses).toEqual([200, 200, 200, 200]);
      expect(p.peak()).toBe(1);
    });

    test("past queueTimeoutMs a waiting request gets 503", async () => {
      const p = limitedPool(100);
      const statuses = await Promise.all(Array.from({ length: 3 }, () => fetch(p.url).then((r) => r.status)));
      expect(statuses.filter((s) => s === 200).length).toBe(1);
      expect(statuses.filter((s) => s === 503).length).toBe(2);
    });
  });

for (const engine of ENGINES)
  describe(`backend ids whose ring seeds collide${engineLabel(engine)}`, () => {
    test("tether starts and serves; the later id is refused new sessions, with a logged reason", async () => {
      // "app-3426" and "app-13129" share a 32-bit ring seed (test/ring/hash-ring.test.ts).
      const bs = [backend("first"), backend("second"), backend("third")];
      const t = using(
        bs,
        startInProcess(
          onEngine(
            {
              listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
              pools: {
                app: {
                  backends: [
                    { id: "app-13129", url: bs[0]?.url },
                    { id: "app-3426", url: bs[1]?.url },
                    { id: "app-2", url: bs[2]?.url },
                  ],
                  persistence: [{ type: "cookie", mode: "insert", name: "S" }],
                },
              },
              secrets: { cookieKeys: [KEY] },
            } as ConfigInput,
            engine,
          ),
        ),
      );
      const refused = t.log.lines.filter((l) => l.msg === "backend takes no new sessions");
      expect(refused).toEqual([
        expect.objectContaining({
          pool: "app",
          backend: "app-3426",
          reason: expect.stringContaining("app-13129"),
        }),
      ]);
      const seen = new Set<string | null>();
      for (let i = 0; i < 60; i++) seen.add(served(await fetch(t.url())));
      expect([...seen].sort()).toEqual(["first", "third"]);
    });
  });
