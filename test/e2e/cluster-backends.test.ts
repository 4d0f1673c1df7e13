/**
 * Backends added and deleted through the admin API, shared by instances on
 * one real Redis: every instance serves them, one started later picks them
 * up, a delete anywhere drains and removes them everywhere, the change is
 * audited where it was made, and Redis going away (and coming back empty)
 * empties no pool.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { startRedis } from "../support/redis.ts";
import { type Running, spawnCli, startInProcess, workersListening } from "../support/tether.ts";
import { until } from "../support/wait.ts";

const TOKEN = "cluster-backends-token";
const KEY = Buffer.alloc(32, 9).toString("base64");
let cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

function backends(...names: string[]): TestBackend[] {
  const list = names.map((n) => backend(n));
  for (const b of list) cleanup.push(() => b.stop());
  return list;
}

const api = (admin: string, path: string, init: RequestInit = {}) =>
  fetch(`${admin}${path}`, { ...init, headers: { authorization: `Bearer ${TOKEN}`, ...init.headers } });
const post = (admin: string, id: string, url: string | undefined, weight = 1000) =>
  api(admin, "/api/backends/app", { method: "POST", body: JSON.stringify({ id, url, weight }) });
const del = (admin: string, id: string) => api(admin, `/api/backends/app/${id}`, { method: "DELETE" });

async function sources(admin: string): Promise<Record<string, string>> {
  const body = (await (await api(admin, "/api/backends")).json()) as {
    backends: { id: string; source: string }[];
  };
  return Object.fromEntries(body.backends.map((b) => [b.id, b.source]));
}

/** A cookie pinned to backend `name`: fresh sessions until one lands there (it has the weight). */
async function cookieFor(web: string, name: string): Promise<string> {
  let cookie = "";
  await until(
    async () => {
      const res = await fetch(`${web}/`, { headers: { connection: "close" } });
      cookie = (res.headers.get("set-cookie") ?? "").split(";")[0] as string;
      return (await res.text()) === name;
    },
    2_000,
    `a new session on ${name}`,
  );
  return cookie;
}

/** What 16 fresh connections carrying the cookie reach (spread over worker threads by the kernel). */
const answers = (web: string, cookie: string) =>
  Promise.all(
    Array.from({ length: 16 }, async () =>
      (await fetch(`${web}/`, { headers: { cookie, connection: "close" } })).text(),
    ),
  );

const backendEvents = (t: Running) =>
  t.audit.filter((e) => String(e.event).startsWith("backend.")).map((e) => `${e.event} ${e.backend}`);

describe("API backends shared through Redis", () => {
  test("seen and served by every instance, picked up by one started later, removed everywhere when deleted anywhere, audited where made", async () => {
    const redis = await startRedis();
    cleanup.push(() => redis.close());
    const [a1, a2, extra] = backends("a1", "a2", "extra");
    const input = {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: [
            { id: "a1", url: a1?.url },
            { id: "a2", url: a2?.url },
          ],
          persistence: [{ type: "cookie", mode: "insert" }],
          drainDeadlineMs: 5_000,
        },
      },
      secrets: { cookieKeys: [KEY] },
      admin: { address: "127.0.0.1:0", token: TOKEN },
      cluster: { redis: { url: redis.url, lookupTimeoutMs: 50 } },
    } as ConfigInput;
    const start = () => {
      const t = startInProcess(input);
      cleanup.push(() => t.stop());
      return t;
    };
    const adminOf = (t: Running) => `http://127.0.0.1:${t.tether.admin?.port}`;
    const a = start();
    const b = start();
    for (const t of [a, b])
      await until(
        () => t.log.lines.some((l) => l.msg === "cluster: connected to redis"),
        3_000,
        "a connection",
      );

    expect((await post(adminOf(a), "extra", extra?.url)).status).toBe(201);
    await until(async () => (await sources(adminOf(b))).extra === "api", 2_000, "B to list the backend");
    // A session A placed on the new backend is honoured by B: B serves it too.
    const cookie = await cookieFor(a.url(), "extra");
    expect(await answers(b.url(), cookie)).toEqual(Array(16).fill("extra"));

    const c = start();
    await until(async () => (await sources(adminOf(c))).extra === "api", 3_000, "C to pick up the backend");
    expect(await answers(c.url(), cookie)).toEqual(Array(16).fill("extra"));

    // Deleted on B: it drains and leaves on A and C as well.
    expect((await del(adminOf(b), "extra")).status).toBe(202);
    for (const t of [a, b, c])
      await until(async () => !("extra" in (await sources(adminOf(t)))), 8_000, "the backend to leave");
    expect((await answers(c.url(), cookie)).every((x) => x === "a1" || x === "a2")).toBe(true);

    expect(backendEvents(a)).toEqual(["backend.added extra"]);
    expect(backendEvents(b)).toEqual(["backend.removing extra", "backend.removed extra"]);
    expect(backendEvents(c)).toEqual([]);
    for (const t of [b, c])
      expect(t.log.lines.filter((l) => l.backend === "extra" && l.by === "another instance").length).toBe(
        t === b ? 1 : 2,
      );
  });

  test("Redis down: pools keep their backends and changes apply locally; Redis back without its data gets this instance's whole set", async () => {
    const redis = await startRedis();
    cleanup.push(() => redis.close());
    const [a1, extra, late] = backends("a1", "extra", "late");
    const input = {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: [{ id: "a1", url: a1?.url }],
          persistence: [{ type: "cookie", mode: "insert" }],
        },
      },
      secrets: { cookieKeys: [KEY] },
      admin: { address: "127.0.0.1:0", token: TOKEN },
      cluster: { redis: { url: redis.url, lookupTimeoutMs: 50 } },
    } as ConfigInput;
    const start = async () => {
      const t = startInProcess(input);
      cleanup.push(() => t.stop());
      await until(
        () => t.log.lines.some((l) => l.msg === "cluster: connected to redis"),
        3_000,
        "a connection",
      );
      return { t, admin: `http://127.0.0.1:${t.tether.admin?.port}` };
    };
    const a = await start();
    const b = await start();
    expect((await post(a.admin, "extra", extra?.url)).status).toBe(201);
    await until(async () => (await sources(b.admin)).extra === "api", 2_000, "B to list extra");

    // Redis gone, its data with it (it runs without persistence); B goes too.
    await b.t.stop();
    await redis.stop();
    await until(
      () => a.t.log.lines.some((l) => String(l.msg).includes("redis connection lost")),
      5_000,
      "A to notice",
    );
    const started = Date.now();
    expect((await post(a.admin, "late", late?.url)).status).toBe(201);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await sources(a.admin)).toEqual({ a1: "config", extra: "api", late: "api" });
    expect(await answers(a.t.url(), await cookieFor(a.t.url(), "late"))).toEqual(Array(16).fill("late"));

    // Back, empty: A writes its whole set (not only the change made meanwhile), and keeps it;
    // an instance started now gets all of it.
    await redis.restart();
    const c = await start();
    await until(
      async () => Object.keys(await sources(c.admin)).length === 3,
      8_000,
      "C to get A's whole set",
    );
    expect(await sources(c.admin)).toEqual({ a1: "config", extra: "api", late: "api" });
    await until(
      () => a.t.log.lines.some((l) => l.msg === "cluster: sharing this instance's API backends"),
      5_000,
      "A to write its set",
    );
    expect(a.t.log.lines.filter((l) => l.msg === "backend removing")).toEqual([]);
    expect(await sources(a.admin)).toEqual({ a1: "config", extra: "api", late: "api" });
  });

  test('"workers": 2 through the CLI: an added backend is served by every worker of the other instance, and a delete there removes it here', async () => {
    const redis = await startRedis();
    cleanup.push(() => redis.close());
    const [a1, a2, extra] = backends("a1", "a2", "extra");
    const dir = tempDir();
    const config = (name: string) =>
      writeConfig(
        dir,
        {
          listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
          pools: {
            app: {
              backends: [
                { id: "a1", url: a1?.url },
                { id: "a2", url: a2?.url },
              ],
              persistence: [{ type: "cookie", mode: "insert" }],
              drainDeadlineMs: 5_000,
            },
          },
          secrets: { cookieKeys: [KEY] },
          admin: { address: "127.0.0.1:0", token: TOKEN },
          cluster: { redis: { url: redis.url, lookupTimeoutMs: 50 } },
          snapshot: { file: `${name}.msgpack` },
          workers: 2,
        },
        `${name}.json`,
      );
    const children = ["a", "b"].map((n) => spawnCli(["--config", config(n)]));
    for (const c of children) cleanup.push(() => c.stop());
    const [ca, cb] = children as [ReturnType<typeof spawnCli>, ReturnType<typeof spawnCli>];
    const webB = `http://127.0.0.1:${await workersListening(cb)}`;
    const webA = `http://127.0.0.1:${await workersListening(ca)}`;
    const adminA = `http://127.0.0.1:${await ca.listening("admin")}`;
    const adminB = `http://127.0.0.1:${await cb.listening("admin")}`;
    for (const c of children) await c.waitFor((l) => l.msg === "cluster: connected to redis");

    expect((await post(adminA, "extra", extra?.url)).status).toBe(201);
    const cookie = await cookieFor(webA, "extra");
    await until(
      async () => (await answers(webB, cookie)).every((x) => x === "extra"),
      3_000,
      "every worker of B to send the session to the added backend",
    );
    expect((await sources(adminB)).extra).toBe("api");

    expect((await del(adminB, "extra")).status).toBe(202);
    await until(async () => !("extra" in (await sources(adminA))), 10_000, "the backend to leave A");
    expect((await answers(webA, cookie)).every((x) => x === "a1" || x === "a2")).toBe(true);
  });
});
