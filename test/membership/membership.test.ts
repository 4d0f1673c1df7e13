/**
 * Dynamic membership in one thread: members added and removed while running
 * are applied as a reload is, sessions stay where they are, and backend
 * objects kept across the change keep their counters.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { backend, type TestBackend } from "../support/backends.ts";
import { startInProcess } from "../support/tether.ts";

let cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

function setup(n: number, pool: Record<string, unknown> = {}) {
  const backends: TestBackend[] = Array.from({ length: n }, (_, i) => backend(`b${i + 1}`));
  const spare = backend("extra");
  const t = startInProcess({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert" }],
        ...pool,
      },
    },
  });
  cleanup.push(() => t.stop());
  for (const b of [...backends, spare]) cleanup.push(() => b.stop());
  return { t, backends, spare };
}

/** A client with its own cookie jar: returns the backend that answered each request. */
function client(base: string) {
  let cookie = "";
  return async () => {
    const res = await fetch(`${base}/`, { headers: cookie ? { cookie } : {} });
    const set = res.headers.get("set-cookie");
    if (set) cookie = set.split(";")[0] as string;
    return await res.text();
  };
}

describe("dynamic membership", () => {
  test("an added backend serves new sessions; every existing session keeps its backend and counters survive", async () => {
    const { t, spare } = setup(2);
    const clients = Array.from({ length: 30 }, () => client(t.url()));
    const before = await Promise.all(clients.map((c) => c()));
    const pool = t.tether.runtime.pools.get("app");
    const b1 = pool?.get("b1");
    const requests = b1?.requests ?? -1;
    expect(requests).toBeGreaterThan(0);

    const added = await t.tether.membership?.add({
      pool: "app",
      id: "extra",
      url: spare.url,
      weight: 1,
      source: "api",
    });
    expect(added).toEqual({ ok: true });
    const after = t.tether.runtime.pools.get("app");
    expect(after).not.toBe(pool);
    expect(after?.get("extra")?.source).toBe("api");
    // The same object, its counters intact.
    expect(after?.get("b1")).toBe(b1 as NonNullable<typeof b1>);
    expect(after?.get("b1")?.requests).toBe(requests);

    expect(await Promise.all(clients.map((c) => c()))).toEqual(before);
    const fresh = await Promise.all(Array.from({ length: 30 }, () => client(t.url())()));
    expect(fresh).toContain("extra");
    expect(t.audit.some((e) => e.event === "backend.added" && e.backend === "extra")).toBe(true);
  });

  test("a removed backend drains, leaves once idle, and its sessions move once", async () => {
    const { t, spare } = setup(2);
    const m = t.tether.membership;
    await m?.add({ pool: "app", id: "extra", url: spare.url, weight: 100, source: "api" });
    const clients = Array.from({ length: 20 }, () => client(t.url()));
    const first = await Promise.all(clients.map((c) => c()));
    const onExtra = clients.filter((_, i) => first[i] === "extra");
    expect(onExtra.length).toBeGreaterThan(0);

    expect(await m?.remove("app", "extra", "test")).toBe(true);
    // Draining: it keeps its sessions and takes no new ones.
    expect(t.tether.runtime.pools.get("app")?.get("extra")?.state).toBe("drain");
    // Nothing in flight: it leaves at the next sweep.
    const end = Date.now() + 5_000;
    while (t.tether.runtime.pools.get("app")?.get("extra") && Date.now() < end) await Bun.sleep(20);
    expect(t.tether.runtime.pools.get("app")?.get("extra")).toBeUndefined();

    const moved = await Promise.all(onExtra.map((c) => c()));
    expect(moved.every((b) => b === "b1" || b === "b2")).toBe(true);
    // Moved once: they stay where they went.
    expect(await Promise.all(onExtra.map((c) => c()))).toEqual(moved);
    expect(t.audit.filter((e) => e.event === "backend.removed").map((e) => e.after)).toEqual(["idle"]);
  });

  test("a reload keeps the backends added while running", async () => {
    const { t, spare } = setup(1);
    await t.tether.membership?.add({ pool: "app", id: "extra", url: spare.url, weight: 1, source: "api" });
    const base = t.tether.membership?.baseConfig;
    if (!base) throw new Error("no membership");
    await t.tether.reload({ ...base, accessLog: true });
    expect(t.tether.runtime.config.accessLog).toBe(true);
    expect(t.tether.runtime.pools.get("app")?.get("extra")?.source).toBe("api");
  });

  test("a joining backend takes no new sessions before its health checks pass", async () => {
    const { t } = setup(1, { healthCheck: { intervalMs: 100, rise: 1, fall: 1 } });
    const dead = backend("dead");
    const url = dead.url;
    dead.stop();
    await t.tether.membership?.add({ pool: "app", id: "dead", url, weight: 1000, source: "api" });
    expect(t.tether.runtime.pools.get("app")?.get("dead")?.down).toBe(true);
    const answers = await Promise.all(Array.from({ length: 20 }, () => client(t.url())()));
    expect(new Set(answers)).toEqual(new Set(["b1"]));
  });
});
