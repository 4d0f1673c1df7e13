/**
 * Health checks, the admin API and metrics, through a running tether.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { config as resolve, spawnCli, startInProcess } from "../support/tether.ts";

const TOKEN = "admin-test-token";
let cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

function start(
  backends: TestBackend[],
  pool: Record<string, unknown> = {},
  extra: Partial<ConfigInput> = {},
) {
  const input = {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: { app: { backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })), ...pool } },
    admin: { address: "127.0.0.1:0", token: TOKEN },
    ...extra,
  } as ConfigInput;
  const { tether, log, audit } = startInProcess(input);
  cleanup.push(() => tether.stop(100));
  for (const b of backends) cleanup.push(() => b.stop());
  const web = `http://127.0.0.1:${[...tether.listeners.values()][0]?.server.port}`;
  const adminUrl = `http://127.0.0.1:${tether.admin?.port}`;
  const api = (path: string, init: RequestInit = {}) =>
    fetch(`${adminUrl}${path}`, { ...init, headers: { authorization: `Bearer ${TOKEN}`, ...init.headers } });
  return { tether, log, audit, web, adminUrl, api, input };
}

const until = async (cond: () => boolean | Promise<boolean>, ms: number) => {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await Bun.sleep(20);
  }
  return false;
};

describe("admin API", () => {
  test("every /api route and /metrics answers 401 without the token or with a wrong one", async () => {
    const t = start([backend("a")]);
    for (const path of ["/api/pools", "/api/backends", "/api/sessions?pool=app", "/metrics"]) {
      expect((await fetch(`${t.adminUrl}${path}`)).status).toBe(401);
      expect(
        (await fetch(`${t.adminUrl}${path}`, { headers: { authorization: "Bearer nope" } })).status,
      ).toBe(401);
      expect((await t.api(path)).status).toBe(200);
    }
    const put = await fetch(`${t.adminUrl}/api/backends/app/b1`, {
      method: "PUT",
      body: '{"state":"drain"}',
    });
    expect(put.status).toBe(401);
    expect((await fetch(`${t.adminUrl}/healthz`)).status).toBe(200);
  });

  test("the admin routes never answer on a traffic listener", async () => {
    const t = start([backend("a", () => new Response("from backend"))]);
    for (const path of ["/api/backends", "/metrics", "/healthz"]) {
      const res = await fetch(`${t.web}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(await res.text()).toBe("from backend");
    }
  });

  test("backends show state, health, counters and sessions", async () => {
    const t = start([backend("a"), backend("b")], { persistence: [{ type: "cookie", mode: "insert" }] });
    for (let i = 0; i < 10; i++) await fetch(`${t.web}/`);
    const body = (await (await t.api("/api/backends")).json()) as { backends: Record<string, unknown>[] };
    expect(body.backends.map((b) => b.id)).toEqual(["b1", "b2"]);
    const total = body.backends.reduce((n, b) => n + (b.requests as number), 0);
    expect(total).toBe(10);
    const sessions = body.backends.reduce((n, b) => n + (b.activeSessions as number), 0);
    // An estimate (HyperLogLog, 1,024 registers per backend): two of the 10 sessions share a
    // register about 4% of the time and count as one.
    expect(sessions).toBeGreaterThanOrEqual(8);
    expect(sessions).toBeLessThanOrEqual(11);
    expect(body.backends[0]).toMatchObject({ pool: "app", state: "ready", health: "up", inflight: 0 });
    const perPool = (await (await t.api("/api/sessions?pool=app")).json()) as { backends: unknown[] };
    expect(perPool.backends.length).toBe(2);
    expect((await t.api("/api/sessions?pool=nope")).status).toBe(404);
  });

  test("PUT changes a backend's state, bad bodies get 400 with the reason, and the state outlives a reload", async () => {
    const t = start([backend("a"), backend("b")]);
    const put = (body: string, path = "/api/backends/app/b1") => t.api(path, { method: "PUT", body });
    const bad: [string, string][] = [
      ["not json", "body must be JSON"],
      ['{"state":"sleeping"}', 'state must be "ready", "drain" or "maint"'],
      ['{"state":"drain","x":1}', 'unknown key "x"'],
      ["[]", "body must be a JSON object"],
    ];
    for (const [body, reason] of bad) {
      const res = await put(body);
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toContain(reason);
    }
    expect((await put('{"state":"drain"}', "/api/backends/app/zz")).status).toBe(404);
    const ok = await put('{"state":"maint"}');
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { backend: { state: string } }).backend.state).toBe("maint");
    expect(
      t.audit.some((e) => e.event === "backend.state" && e.state === "maint" && e.backend === "b1"),
    ).toBe(true);
    for (let i = 0; i < 20; i++) expect(await (await fetch(`${t.web}/`)).text()).toBe("b");
    await t.tether.reload(resolve(t.input));
    const after = (await (await t.api("/api/backends")).json()) as {
      backends: { id: string; state: string }[];
    };
    expect(after.backends.find((b) => b.id === "b1")?.state).toBe("maint");
  });

  test("metrics parse as Prometheus text and move with traffic", async () => {
    const t = start([backend("a")], { persistence: [{ type: "cookie", mode: "insert" }] });
    const scrape = async () => (await (await t.api("/metrics")).text()) as string;
    const value = (text: string, series: string) => {
      const line = text.split("\n").find((l) => l.startsWith(series));
      return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
    };
    const series = 'tether_requests_total{listener="web",pool="app",backend="b1",code="200"}';
    const before = value(await scrape(), series);
    for (let i = 0; i < 5; i++) await fetch(`${t.web}/`);
    await fetch(`${t.web}/`, { headers: { cookie: "TETHER=forged" } });
    const text = await scrape();
    expect(value(text, series)).toBe(before + 6);
    // Every non-comment line is "name{labels} value".
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      expect(line).toMatch(
        /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? -?[0-9.e+-]+$|^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? (NaN|Nan|[+-]Inf)$/,
      );
    }
    for (const name of [
      "tether_request_duration_seconds_bucket",
      "tether_backend_up",
      "tether_backend_inflight",
      "tether_sessions_active",
      "process_cpu_seconds_total",
    ]) {
      expect(text).toContain(name);
    }
    expect(value(text, 'tether_cookie_rejected_total{reason="malformed"}')).toBe(1);
    expect(
      value(text, 'tether_persistence_decisions_total{pool="app",rule="cookie-insert",outcome="rejected"}'),
    ).toBe(1);
    expect(value(text, 'tether_persistence_decisions_total{pool="app",rule="none",outcome="miss"}')).toBe(6);
  });
});

describe("health checks", () => {
  test("a killed backend is marked down within fall x interval and up again after rise", async () => {
    let healthy = true;
    const a = backend("a", () => new Response("a", { status: healthy ? 200 : 503 }));
    const t = start([a, backend("b")], {
      healthCheck: { path: "/health", intervalMs: 100, timeoutMs: 100, rise: 2, fall: 3 },
    });
    const health = async () =>
      (
        (await (await t.api("/api/backends")).json()) as { backends: { id: string; health: string }[] }
      ).backends.find((b) => b.id === "b1")?.health;
    expect(await health()).toBe("up");
    healthy = false;
    const t0 = Date.now();
    expect(await until(async () => (await health()) === "down", 2000)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(3 * 100 + 400);
    for (let i = 0; i < 10; i++) expect(await (await fetch(`${t.web}/`)).text()).toBe("b");
    healthy = true;
    expect(await until(async () => (await health()) === "up", 2000)).toBe(true);
    expect(t.audit.filter((e) => e.event === "backend.state").map((e) => e.health)).toEqual(["down", "up"]);
  });

  test("passive checks: maxFails connect errors mark a backend down for failTimeoutMs", async () => {
    const a = backend("a");
    const b = backend("b");
    const t = start([a, b], { maxFails: 2, failTimeoutMs: 400, retries: 1 });
    a.stop();
    const b1Down = () =>
      t.audit.some((e) => e.event === "backend.state" && e.backend === "b1" && e.health === "down");
    // New sessions land on either backend at random, so six requests missed b1 twice about one run
    // in nine: send until two have tried it (bounded), every one answered by the retry.
    for (let i = 0; i < 60 && !b1Down(); i++) expect((await fetch(`${t.web}/`)).status).toBe(200);
    expect(b1Down()).toBe(true);
    expect(await until(() => t.audit.some((e) => e.backend === "b1" && e.health === "up"), 2000)).toBe(true);
  });

  test("when every backend of a pool is down, the pool answers 503 at once", async () => {
    const a = backend("a", () => new Response("no", { status: 500 }));
    const t = start([a], { healthCheck: { intervalMs: 100, timeoutMs: 100, rise: 1, fall: 1 } });
    expect(await until(() => t.audit.some((e) => e.health === "down"), 2000)).toBe(true);
    const t0 = performance.now();
    expect((await fetch(`${t.web}/`)).status).toBe(503);
    expect(performance.now() - t0).toBeLessThan(200);
  });
});

describe("admin listener safety", () => {
  test("tether refuses an admin listener on a non-loopback address without a token", async () => {
    const file = writeConfig(tempDir(), {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: { app: { backends: [{ id: "a", url: "http://127.0.0.1:1" }] } },
      admin: { address: "0.0.0.0:0" },
    });
    const child = spawnCli(["check", "--config", file]);
    expect(await child.proc.exited).toBe(2);
    expect(child.stderr()).toContain(
      "admin.token: an admin listener on a non-loopback address needs a token",
    );
  });

  test("with no token on loopback, one is generated and the dashboard URL printed with it (stderr only)", async () => {
    const a = backend("a");
    cleanup.push(() => a.stop());
    const file = writeConfig(tempDir(), {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: { app: { backends: [{ id: "a", url: a.url }] } },
      admin: { address: "127.0.0.1:0" },
    });
    const child = spawnCli(["--config", file]);
    cleanup.push(() => child.stop());
    const port = await child.listening("admin");
    await until(() => child.stderr().includes("#token="), 3000);
    const token = /#token=([A-Za-z0-9_-]+)/.exec(child.stderr())?.[1] as string;
    expect(token.length).toBeGreaterThan(20);
    const ok = await fetch(`http://127.0.0.1:${port}/api/pools`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(ok.status).toBe(200);
    expect(JSON.stringify(child.lines)).not.toContain(token);
  });
});
